// The scripts as files, the argocd-cm snippet rendered from them, and the testdata documents.
package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

const (
	healthKey   = "resource.customizations.health.dedup2d.io_Dedup2DRollout"
	actionsKey  = "resource.customizations.actions.dedup2d.io_Dedup2DRollout"
	beginMarker = "<!-- argocd-cm:begin (generated from health.lua and actions/ by hack/gitops.sh; DEDUP2D_BLESS=1 hack/gitops.sh rewrites it) -->\n"
	endMarker   = "<!-- argocd-cm:end -->\n"
)

// actionNames is the order of the definitions in the snippet; actions/ must hold exactly these.
var actionNames = []string{"pause", "resume", "promote", "abort", "abort-full", "retry"}

// Scripts are the health check, the action discovery and each action, by name.
type Scripts struct {
	Health    string
	Discovery string
	Actions   map[string]string
}

func readFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	return string(b), err
}

func loadScripts(dir string) (Scripts, error) {
	s := Scripts{Actions: map[string]string{}}
	var err error
	if s.Health, err = readFile(filepath.Join(dir, "health.lua")); err != nil {
		return s, err
	}
	if s.Discovery, err = readFile(filepath.Join(dir, "actions", "discovery.lua")); err != nil {
		return s, err
	}
	entries, err := os.ReadDir(filepath.Join(dir, "actions"))
	if err != nil {
		return s, err
	}
	var found []string
	for _, e := range entries {
		if e.IsDir() {
			found = append(found, e.Name())
		}
	}
	want := append([]string(nil), actionNames...)
	sort.Strings(want)
	if strings.Join(found, ",") != strings.Join(want, ",") {
		return s, fmt.Errorf("actions/ holds %v, expected %v", found, want)
	}
	for _, name := range actionNames {
		if s.Actions[name], err = readFile(filepath.Join(dir, "actions", name, "action.lua")); err != nil {
			return s, err
		}
	}
	return s, nil
}

// indent returns script as a YAML block scalar body at the given indentation (blank lines stay empty).
func indent(script, pad string) string {
	var b strings.Builder
	for _, line := range strings.SplitAfter(strings.TrimRight(script, "\n")+"\n", "\n") {
		if line == "" {
			continue
		}
		if line != "\n" {
			b.WriteString(pad)
		}
		b.WriteString(line)
	}
	return b.String()
}

// renderSnippet is the argocd-cm ConfigMap holding the health check and the actions.
func renderSnippet(s Scripts) string {
	var b strings.Builder
	b.WriteString("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: argocd-cm\n  namespace: argocd\n")
	b.WriteString("  labels:\n    app.kubernetes.io/name: argocd-cm\n    app.kubernetes.io/part-of: argocd\ndata:\n")
	b.WriteString("  " + healthKey + ": |\n" + indent(s.Health, "    "))
	b.WriteString("  " + actionsKey + ": |\n")
	b.WriteString("    discovery.lua: |\n" + indent(s.Discovery, "      "))
	b.WriteString("    definitions:\n")
	for _, name := range actionNames {
		b.WriteString("    - name: " + name + "\n      action.lua: |\n" + indent(s.Actions[name], "        "))
	}
	return b.String()
}

// checkSnippet checks README.md's snippet is the rendering of the files (or rewrites it), then parses
// it as Argo CD would and returns the scripts read from it, after checking they equal the files.
func checkSnippet(t *tally, dir string, files Scripts, bless bool) (Scripts, error) {
	readme := filepath.Join(dir, "README.md")
	text, err := readFile(readme)
	if err != nil {
		t.check("snippet", err)
		return Scripts{}, err
	}
	begin := strings.Index(text, beginMarker)
	end := strings.Index(text, endMarker)
	if begin < 0 || end < begin {
		err = fmt.Errorf("%s lacks the argocd-cm markers", readme)
		t.check("snippet", err)
		return Scripts{}, err
	}
	rendered := renderSnippet(files)
	block := "```yaml\n" + rendered + "```\n"
	current := text[begin+len(beginMarker) : end]
	if bless && current != block {
		text = text[:begin+len(beginMarker)] + block + text[end:]
		if err := os.WriteFile(readme, []byte(text), 0o644); err != nil {
			t.check("snippet", err)
			return Scripts{}, err
		}
		current = block
		fmt.Printf("rewrote the argocd-cm snippet in %s\n", readme)
	}
	if current != block {
		err = errors.New("README.md's argocd-cm snippet differs from health.lua and actions/; run DEDUP2D_BLESS=1 hack/gitops.sh")
		t.check("snippet matches the .lua files", err)
		return Scripts{}, err
	}
	t.check("snippet matches the .lua files", nil)

	parsed, err := parseSnippet(rendered)
	if err == nil && parsed.Health != files.Health {
		err = errors.New("the parsed health script differs from health.lua")
	}
	if err == nil && parsed.Discovery != files.Discovery {
		err = errors.New("the parsed discovery.lua differs from actions/discovery.lua")
	}
	for _, name := range actionNames {
		if err == nil && parsed.Actions[name] != files.Actions[name] {
			err = fmt.Errorf("the parsed %s action differs from actions/%s/action.lua", name, name)
		}
	}
	t.check("snippet parses back to the .lua files", err)
	return parsed, err
}

// parseSnippet reads the ConfigMap the way Argo CD does (data keys; the actions key is YAML itself).
func parseSnippet(snippet string) (Scripts, error) {
	var cm struct {
		Data map[string]string `json:"data"`
	}
	if err := yaml.Unmarshal([]byte(snippet), &cm); err != nil {
		return Scripts{}, err
	}
	var actions struct {
		Discovery   string `json:"discovery.lua"`
		Definitions []struct {
			Name   string `json:"name"`
			Action string `json:"action.lua"`
		} `json:"definitions"`
	}
	if err := yaml.UnmarshalStrict([]byte(cm.Data[actionsKey]), &actions); err != nil {
		return Scripts{}, fmt.Errorf("%s: %w", actionsKey, err)
	}
	s := Scripts{Health: cm.Data[healthKey], Discovery: actions.Discovery, Actions: map[string]string{}}
	for _, d := range actions.Definitions {
		s.Actions[d.Name] = d.Action
	}
	return s, nil
}

// Doc is one testdata document as Argo CD's controller holds live objects (int64 numbers).
type Doc struct {
	Path string // relative to DIR, e.g. testdata/soaking.json
	Obj  map[string]any
}

func loadDoc(dir, rel string) (map[string]any, error) {
	raw, err := os.ReadFile(filepath.Join(dir, rel))
	if err != nil {
		return nil, err
	}
	js, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", rel, err)
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(js); err != nil {
		return nil, fmt.Errorf("%s: %w", rel, err)
	}
	return u.Object, nil
}

func loadTestdata(dir string) (map[string]Doc, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "testdata", "*.json"))
	if err != nil {
		return nil, err
	}
	if len(paths) == 0 {
		return nil, fmt.Errorf("no documents in %s/testdata (generate them: DEDUP2D_BLESS=1 cargo test -p dedup2d-core --lib plan::gitops_fixtures)", dir)
	}
	docs := map[string]Doc{}
	for _, p := range paths {
		rel := filepath.Join("testdata", filepath.Base(p))
		obj, err := loadDoc(dir, rel)
		if err != nil {
			return nil, err
		}
		docs[rel] = Doc{Path: rel, Obj: obj}
	}
	return docs, nil
}

// checkKeys: Argo CD turns `<group>_<kind>` in the argocd-cm keys into `<group>/<kind>` (exactly one
// `_`), which must be the group and kind of the documents the scripts are for.
func checkKeys(t *tally, docs map[string]Doc) {
	var err error
	for _, key := range []string{healthKey, actionsKey} {
		groupKind := strings.TrimPrefix(strings.TrimPrefix(key, "resource.customizations.health."), "resource.customizations.actions.")
		parts := strings.Split(groupKind, "_")
		if len(parts) != 2 {
			err = fmt.Errorf("%s: Argo CD needs <group>_<kind>", key)
			break
		}
		for _, d := range docs {
			gvk := (&unstructured.Unstructured{Object: d.Obj}).GroupVersionKind()
			if gvk.Group != parts[0] || gvk.Kind != parts[1] {
				err = fmt.Errorf("%s is for %s/%s, %s is a %s/%s", key, parts[0], parts[1], d.Path, gvk.Group, gvk.Kind)
			}
		}
	}
	t.check("argocd-cm keys name the documents' group and kind", err)
}
