// gitops-check: checks docs/gitops against the real tools. It runs the Argo CD health check and
// resource actions in Argo CD's Lua environment on every planner-produced document in testdata/,
// compares them with health_test.yaml and actions/action_test.yaml (Argo CD's test formats), runs
// kstatus (Flux, Helm --wait) on them against kstatus_test.yaml, checks that the argocd-cm snippet in
// README.md is exactly the .lua files, and runs controls that must fail (string/math absent, a wrong
// script must be caught). Prints one line per failure and `gitops: N passed, M failed`; exit 1 on
// any failure, 2 on bad usage.
//
//	gitops-check [-bless] DIR    DIR is docs/gitops; -bless rewrites the snippet in DIR/README.md
package main

import (
	"flag"
	"fmt"
	"os"
)

// tally counts checks; every check is either passed or failed with one line saying why.
type tally struct {
	passed, failed int
	quiet          bool
}

func (t *tally) check(name string, err error) {
	if err != nil {
		t.failed++
		if !t.quiet {
			fmt.Printf("FAIL %s: %v\n", name, err)
		}
		return
	}
	t.passed++
}

func main() {
	bless := flag.Bool("bless", false, "rewrite the argocd-cm snippet in DIR/README.md from the .lua files")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: gitops-check [-bless] DIR (DIR: docs/gitops)")
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	dir := flag.Arg(0)
	if _, err := os.Stat(dir); err != nil {
		fmt.Fprintf(os.Stderr, "gitops-check: %v\n", err)
		os.Exit(2)
	}
	t := &tally{}
	run(t, dir, *bless)
	fmt.Printf("gitops: %d passed, %d failed\n", t.passed, t.failed)
	if t.failed > 0 {
		os.Exit(1)
	}
}

func run(t *tally, dir string, bless bool) {
	files, err := loadScripts(dir)
	t.check("scripts", err)
	if err != nil {
		return
	}
	scripts, err := checkSnippet(t, dir, files, bless)
	if err != nil {
		return
	}
	docs, err := loadTestdata(dir)
	t.check("testdata", err)
	if err != nil {
		return
	}
	checkKeys(t, docs)
	checkHealth(t, dir, scripts, docs)
	checkActions(t, dir, scripts, docs)
	checkKstatus(t, dir, docs)
	checkControls(t, dir, scripts, docs)
}
