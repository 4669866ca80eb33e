// Controls that prove the checker can fail: scripts Argo CD would reject must error here too, and a
// wrong health check or discovery must be reported as mismatches.
package main

import (
	"fmt"
	"strings"
	"time"
)

// mustFail are scripts that work in a stock Lua but not under Argo CD's library set.
var mustFail = map[string]string{
	"string.format":       `return {status = string.format("%s", "Healthy")}`,
	"s:find":              `local s = "Healthy"; if s:find("H") then return {status = s} end`,
	"math.floor":          `return {status = "Healthy", message = tostring(math.floor(1.5))}`,
	"global os.time":      `return {status = "Healthy", message = tostring(os.time())}`,
	"io.open":             `io.open("/etc/passwd"); return {status = "Healthy"}`,
	"os.exit via require": `require("os").exit(1); return {status = "Healthy"}`,
	"endless loop":        `while true do end`,
}

func checkControls(t *tally, dir string, s Scripts, docs map[string]Doc) {
	obj := map[string]any{"metadata": map[string]any{"name": "x"}}
	for name, script := range mustFail {
		start := time.Now()
		_, err := runHealth(script, obj)
		if err == nil {
			t.check("control "+name, fmt.Errorf("the script ran; Argo CD would reject it"))
			continue
		}
		if name == "endless loop" && time.Since(start) > 3*luaTimeout {
			t.check("control "+name, fmt.Errorf("stopped only after %v", time.Since(start)))
			continue
		}
		t.check("control "+name, nil)
	}

	// The safe os from require("os") has time (the clock) and date, nothing else.
	got, err := runHealth(`local os = require("os")
local n = 0
for _ in pairs(os) do n = n + 1 end
return {status = "Healthy", message = tostring(os.time()) .. " " .. os.date("!%Y-%m-%dT%XZ") .. " " .. tostring(n)}`, obj)
	want := fmt.Sprintf("%d %s 2", fixedClock, time.Unix(fixedClock, 0).UTC().Format("2006-01-02T15:04:05Z"))
	if err == nil && got.Message != want {
		err = fmt.Errorf("got %q, want %q", got.Message, want)
	}
	t.check("control require(\"os\") is the safe os", err)

	// A health check that always says Healthy, and a discovery that enables everything, must be caught.
	mutants := []struct {
		name string
		run  func(sub *tally)
	}{
		{"health always Healthy", func(sub *tally) {
			healthMismatches(sub, dir, `return {status = "Healthy", message = "completed"}`, docs)
		}},
		{"health with an invalid status", func(sub *tally) {
			healthMismatches(sub, dir, `return {status = "Fine", message = "completed"}`, docs)
		}},
		{"discovery enabling every action", func(sub *tally) {
			all := "local a = {}\n"
			for _, n := range actionNames {
				all += fmt.Sprintf("a[%q] = {disabled = false}\n", n)
			}
			m := s
			m.Discovery = all + "return a"
			checkActions(sub, dir, m, docs)
		}},
		{"a request action without a fresh nonce", func(sub *tally) {
			m := s
			m.Actions = map[string]string{}
			for k, v := range s.Actions {
				m.Actions[k] = strings.ReplaceAll(v, `tostring(os.time())`, `"1700000999"`)
			}
			checkActions(sub, dir, m, docs)
		}},
	}
	for _, mu := range mutants {
		sub := &tally{quiet: true}
		mu.run(sub)
		var err error
		if sub.failed == 0 {
			err = fmt.Errorf("no check failed")
		}
		t.check("control mutant: "+mu.name, err)
	}
}
