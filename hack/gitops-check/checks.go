// The checks: health (Argo CD's health_test.yaml format), actions (discovery and the object each
// action returns, as the patch Argo CD would apply), and kstatus.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

// fixedClock is what os.time() returns in the action tests, so expected patches are exact.
const fixedClock = 1700000999

const requestAnnotation = "dedup2d.io/request"

var validHealth = map[string]bool{"Healthy": true, "Progressing": true, "Degraded": true, "Suspended": true, "Missing": true, "Unknown": true}

// HealthStatus is what a health script returns.
type HealthStatus struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

func readYAML(dir, rel string, into any) error {
	raw, err := readFile(filepath.Join(dir, rel))
	if err != nil {
		return err
	}
	if err := yaml.UnmarshalStrict([]byte(raw), into); err != nil {
		return fmt.Errorf("%s: %w", rel, err)
	}
	return nil
}

// runHealth runs a health script as Argo CD does (an unknown status becomes Unknown).
func runHealth(script string, obj map[string]any) (HealthStatus, error) {
	out, err := VM{Clock: func() int64 { return fixedClock }}.Run(obj, script)
	if err != nil {
		return HealthStatus{}, err
	}
	var hs HealthStatus
	if err := remarshal(out, &hs); err != nil {
		return HealthStatus{}, err
	}
	if !validHealth[hs.Status] {
		return HealthStatus{Status: "Unknown", Message: "Lua returned an invalid health status"}, nil
	}
	return hs, nil
}

func remarshal(in, out any) error {
	b, err := json.Marshal(in)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, out)
}

// matches compares a result with an expectation: status exactly, the expected message as a substring.
func matches(gotStatus, gotMessage, wantStatus, wantMessage string) error {
	if wantMessage == "" {
		return errors.New("the expectation has no message; give a substring the message must contain")
	}
	if gotStatus != wantStatus || !strings.Contains(gotMessage, wantMessage) {
		return fmt.Errorf("got %s %q, want %s with %q", gotStatus, gotMessage, wantStatus, wantMessage)
	}
	return nil
}

type healthTests struct {
	Tests []struct {
		HealthStatus HealthStatus `json:"healthStatus"`
		InputPath    string       `json:"inputPath"`
	} `json:"tests"`
}

// coverage fails when a testdata document has no expectation in file.
func coverage(t *tally, file string, docs map[string]Doc, used map[string]bool) {
	var missing []string
	for p := range docs {
		if !used[p] {
			missing = append(missing, p)
		}
	}
	sort.Strings(missing)
	var err error
	if len(missing) > 0 {
		err = fmt.Errorf("no expectation for %s", strings.Join(missing, ", "))
	}
	t.check(file+" covers every testdata document", err)
}

func healthMismatches(t *tally, dir, script string, docs map[string]Doc) {
	var tests healthTests
	err := readYAML(dir, "health_test.yaml", &tests)
	t.check("health_test.yaml", err)
	if err != nil {
		return
	}
	used := map[string]bool{}
	for _, tc := range tests.Tests {
		used[tc.InputPath] = true
		name := "health " + tc.InputPath
		doc, ok := docs[tc.InputPath]
		if !ok {
			t.check(name, errors.New("no such testdata document"))
			continue
		}
		got, err := runHealth(script, doc.Obj)
		if err == nil {
			err = matches(got.Status, got.Message, tc.HealthStatus.Status, tc.HealthStatus.Message)
		}
		t.check(name, err)
	}
	coverage(t, "health_test.yaml", docs, used)
}

func checkHealth(t *tally, dir string, s Scripts, docs map[string]Doc) {
	healthMismatches(t, dir, s.Health, docs)
}

type actionTests struct {
	DiscoveryTests []struct {
		InputPath string `json:"inputPath"`
		Result    []struct {
			Name     string `json:"name"`
			Disabled bool   `json:"disabled"`
		} `json:"result"`
	} `json:"discoveryTests"`
	ActionTests []struct {
		Action        string         `json:"action"`
		InputPath     string         `json:"inputPath"`
		ExpectedPatch map[string]any `json:"expectedPatch"`
	} `json:"actionTests"`
}

// discover runs discovery.lua and returns "name=disabled" entries, sorted.
func discover(script string, obj map[string]any) ([]string, error) {
	out, err := VM{Clock: func() int64 { return fixedClock }}.Run(obj, script)
	if err != nil {
		return nil, err
	}
	var got []string
	switch m := out.(type) {
	case []any:
		if len(m) > 0 {
			return nil, errors.New("discovery returned an array")
		}
	case map[string]any:
		for name, v := range m {
			disabled := false
			if fields, ok := v.(map[string]any); ok {
				disabled, _ = fields["disabled"].(bool)
			}
			got = append(got, fmt.Sprintf("%s=%v", name, disabled))
		}
	default:
		return nil, fmt.Errorf("discovery returned %T", out)
	}
	sort.Strings(got)
	return got, nil
}

// jsonish normalises numbers (int64 vs float64) by a JSON round trip.
func jsonish(v any) any {
	var out any
	if remarshal(v, &out) != nil {
		return v
	}
	return out
}

// runAction runs an action at clock `at` and returns the object it returned, with Argo CD's fix-up
// for Lua's empty tables (an empty table where the input had an object keeps the object).
func runAction(script string, obj map[string]any, at int64) (map[string]any, error) {
	out, err := VM{Clock: func() int64 { return at }}.Run(obj, script)
	if err != nil {
		return nil, err
	}
	m, ok := jsonish(out).(map[string]any)
	if !ok {
		return nil, fmt.Errorf("the action returned %T, not an object", out)
	}
	return keepEmptyObjects(m, jsonish(obj).(map[string]any)), nil
}

func keepEmptyObjects(out, in map[string]any) map[string]any {
	for k, old := range in {
		switch nv := out[k].(type) {
		case map[string]any:
			if om, ok := old.(map[string]any); ok {
				out[k] = keepEmptyObjects(nv, om)
			}
		case []any:
			if om, ok := old.(map[string]any); ok && len(nv) == 0 {
				out[k] = om
			}
		}
	}
	return out
}

// mergePatch is the RFC 7386 patch from a to b: what the action changes.
func mergePatch(a, b map[string]any) map[string]any {
	p := map[string]any{}
	for k, bv := range b {
		av, ok := a[k]
		if ok && reflect.DeepEqual(av, bv) {
			continue
		}
		am, aIsMap := av.(map[string]any)
		bm, bIsMap := bv.(map[string]any)
		if ok && aIsMap && bIsMap {
			p[k] = mergePatch(am, bm)
		} else {
			p[k] = bv
		}
	}
	for k := range a {
		if _, ok := b[k]; !ok {
			p[k] = nil
		}
	}
	return p
}

func requestValue(obj map[string]any) string {
	v, _, _ := unstructured.NestedString(obj, "metadata", "annotations", requestAnnotation)
	return v
}

func checkActions(t *tally, dir string, s Scripts, docs map[string]Doc) {
	var tests actionTests
	err := readYAML(dir, filepath.Join("actions", "action_test.yaml"), &tests)
	t.check("actions/action_test.yaml", err)
	if err != nil {
		return
	}
	for _, tc := range tests.DiscoveryTests {
		name := "discovery " + tc.InputPath
		doc, ok := docs[strings.TrimPrefix(tc.InputPath, "../")]
		if !ok {
			t.check(name, errors.New("no such testdata document"))
			continue
		}
		got, err := discover(s.Discovery, doc.Obj)
		var want []string
		for _, r := range tc.Result {
			want = append(want, fmt.Sprintf("%s=%v", r.Name, r.Disabled))
		}
		sort.Strings(want)
		if err == nil && strings.Join(got, " ") != strings.Join(want, " ") {
			err = fmt.Errorf("got %v, want %v", got, want)
		}
		t.check(name, err)
	}
	tested := map[string]bool{}
	for _, tc := range tests.ActionTests {
		name := "action " + tc.Action + " " + tc.InputPath
		tested[tc.Action] = true
		doc, ok := docs[strings.TrimPrefix(tc.InputPath, "../")]
		script, known := s.Actions[tc.Action]
		if !ok || !known {
			t.check(name, errors.New("no such testdata document or action"))
			continue
		}
		t.check(name, checkOneAction(script, doc.Obj, jsonish(tc.ExpectedPatch).(map[string]any)))
	}
	var untested []string
	for _, a := range actionNames {
		if !tested[a] {
			untested = append(untested, a)
		}
	}
	err = nil
	if len(untested) > 0 {
		err = fmt.Errorf("no action test for %v", untested)
	}
	t.check("actions/action_test.yaml tests every action", err)
}

// checkOneAction: the patch at the fixed clock is the expected one. A request action sends a value
// never sent before: repeated within the same second it still changes the annotation, and a second
// later on the same input it sends another value (the operator handles each value once, and status
// remembers the last one even if the annotation is removed). Pause and resume are idempotent.
func checkOneAction(script string, in, want map[string]any) error {
	out, err := runAction(script, in, fixedClock)
	if err != nil {
		return err
	}
	in = jsonish(in).(map[string]any)
	if got := mergePatch(in, out); !reflect.DeepEqual(got, want) {
		g, _ := json.Marshal(got)
		w, _ := json.Marshal(want)
		return fmt.Errorf("patch %s, want %s", g, w)
	}
	again, err := runAction(script, out, fixedClock)
	if err != nil {
		return err
	}
	if requestValue(out) == requestValue(in) {
		if p := mergePatch(out, again); len(p) != 0 {
			return fmt.Errorf("running it again changed %v", p)
		}
		return nil
	}
	later, err := runAction(script, in, fixedClock+1)
	if err != nil {
		return err
	}
	first, repeat, next := requestValue(out), requestValue(again), requestValue(later)
	if repeat == first || next == first {
		return fmt.Errorf("a repeated request is not new: %q, then %q (same second), %q (a second later, same input)", first, repeat, next)
	}
	return nil
}

type kstatusTests struct {
	Tests []struct {
		InputPath string `json:"inputPath"`
		Status    string `json:"status"`
		Message   string `json:"message"`
	} `json:"tests"`
}

func checkKstatus(t *tally, dir string, docs map[string]Doc) {
	var tests kstatusTests
	err := readYAML(dir, "kstatus_test.yaml", &tests)
	t.check("kstatus_test.yaml", err)
	if err != nil {
		return
	}
	used := map[string]bool{}
	for _, tc := range tests.Tests {
		used[tc.InputPath] = true
		name := "kstatus " + tc.InputPath
		doc, ok := docs[tc.InputPath]
		if !ok {
			t.check(name, errors.New("no such testdata document"))
			continue
		}
		res, err := status.Compute(&unstructured.Unstructured{Object: doc.Obj})
		if err == nil {
			err = matches(res.Status.String(), res.Message, tc.Status, tc.Message)
		}
		t.check(name, err)
	}
	coverage(t, "kstatus_test.yaml", docs, used)
}
