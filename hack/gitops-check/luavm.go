// The Lua VM as Argo CD sets it up for custom health checks and resource actions (util/lua/lua.go):
// gopher-lua with no standard library except package, base, table and a "safe" os offering only
// time and date, a global `obj`, an empty `actionParams`, and one second to finish.
//
// Two details are reproduced on purpose because scripts depend on them: Argo CD's os opener
// registers time/date into the `table` module, so the global `os` stays nil and scripts must use
// `local os = require("os")`; and `string`/`math` are absent (no s:find, no string.format).
package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	lua "github.com/yuin/gopher-lua"
)

// luaTimeout is Argo CD's limit for one script run.
const luaTimeout = time.Second

// VM runs scripts against one object. Clock is what os.time() returns (fixed in tests).
type VM struct {
	Clock func() int64
}

// Run executes script with `obj` set to obj and returns the script's return value as Go data.
func (vm VM) Run(obj map[string]any, script string) (any, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.OsLibName, vm.openSafeOsLikeArgo},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
			return nil, fmt.Errorf("opening %q: %w", lib.name, err)
		}
	}
	l.PreloadModule(lua.OsLibName, vm.safeOsLoader)
	ctx, cancel := context.WithTimeout(context.Background(), luaTimeout)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("actionParams", l.NewTable())
	l.SetGlobal("obj", toLua(l, obj))
	if err := l.DoString(script); err != nil {
		return nil, err
	}
	ret := l.Get(-1)
	if ret.Type() != lua.LTTable {
		return nil, fmt.Errorf("expect table output from Lua script, not %s", ret.Type())
	}
	return fromLua(ret)
}

func (vm VM) safeOsFuncs() map[string]lua.LGFunction {
	return map[string]lua.LGFunction{"time": vm.osTime, "date": vm.osDate}
}

// openSafeOsLikeArgo registers the safe functions the way Argo CD does: into the `table` module.
func (vm VM) openSafeOsLikeArgo(l *lua.LState) int {
	l.Push(l.RegisterModule(lua.TabLibName, vm.safeOsFuncs()))
	return 1
}

func (vm VM) safeOsLoader(l *lua.LState) int {
	l.Push(l.SetFuncs(l.NewTable(), vm.safeOsFuncs()))
	return 1
}

func (vm VM) now() time.Time { return time.Unix(vm.Clock(), 0) }

// osTime: os.time() is the clock; os.time{year=..., month=..., day=...} a local calendar time.
func (vm VM) osTime(l *lua.LState) int {
	if l.GetTop() == 0 {
		l.Push(lua.LNumber(vm.Clock()))
		return 1
	}
	t := l.CheckTable(1)
	field := func(k string, def int) int {
		if n, ok := t.RawGetString(k).(lua.LNumber); ok {
			return int(n)
		}
		return def
	}
	at := time.Date(field("year", -1), time.Month(field("month", -1)), field("day", -1),
		field("hour", 12), field("min", 0), field("sec", 0), 0, time.Local)
	l.Push(lua.LNumber(at.Unix()))
	return 1
}

// osDate supports "*t" and the strftime flags Argo CD's safe os knows; "!" means UTC.
func (vm VM) osDate(l *lua.LState) int {
	t := vm.now()
	format := "%c"
	if l.GetTop() >= 1 {
		format = l.CheckString(1)
		if strings.HasPrefix(format, "!") {
			t = t.UTC()
			format = format[1:]
		}
		if l.GetTop() >= 2 {
			t = time.Unix(l.CheckInt64(2), 0)
		}
	}
	if strings.HasPrefix(format, "*t") {
		tb := l.NewTable()
		for k, v := range map[string]int{"year": t.Year(), "month": int(t.Month()), "day": t.Day(),
			"hour": t.Hour(), "min": t.Minute(), "sec": t.Second(), "wday": int(t.Weekday()) + 1, "yday": 0} {
			tb.RawSetString(k, lua.LNumber(v))
		}
		tb.RawSetString("isdst", lua.LFalse)
		l.Push(tb)
		return 1
	}
	layouts := map[byte]string{'a': "Mon", 'A': "Monday", 'b': "Jan", 'B': "January", 'c': "02 Jan 06 15:04 MST",
		'd': "02", 'F': "2006-01-02", 'H': "15", 'I': "03", 'm': "01", 'M': "04", 'p': "PM", 'P': "pm", 'S': "05",
		'x': "15/04/05", 'X': "15:04:05", 'y': "06", 'Y': "2006", 'z': "-0700", 'Z': "MST"}
	var b strings.Builder
	for i := 0; i < len(format); i++ {
		if format[i] != '%' || i+1 == len(format) {
			b.WriteByte(format[i])
			continue
		}
		i++
		if layout, ok := layouts[format[i]]; ok {
			b.WriteString(t.Format(layout))
		} else if format[i] == 'w' {
			b.WriteString(fmt.Sprint(int(t.Weekday())))
		} else if format[i] == '%' {
			b.WriteByte('%')
		} else {
			b.WriteByte('%')
			b.WriteByte(format[i])
		}
	}
	l.Push(lua.LString(b.String()))
	return 1
}

// toLua converts decoded JSON (int64 or float64 numbers) to Lua values, as Argo CD's decodeValue does.
func toLua(l *lua.LState, v any) lua.LValue {
	switch x := v.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(x)
	case string:
		return lua.LString(x)
	case int64:
		return lua.LNumber(x)
	case int:
		return lua.LNumber(x)
	case float64:
		return lua.LNumber(x)
	case []any:
		t := l.CreateTable(len(x), 0)
		for _, item := range x {
			t.Append(toLua(l, item))
		}
		return t
	case map[string]any:
		t := l.CreateTable(0, len(x))
		for k, item := range x {
			t.RawSetH(lua.LString(k), toLua(l, item))
		}
		return t
	}
	return lua.LNil
}

var errUnsupported = errors.New("unsupported Lua value in the result")

// fromLua converts a script's result to JSON-shaped Go data the way gopher-json encodes it: a table
// with keys 1..n is an array, an empty table is an empty array, any other table an object.
func fromLua(v lua.LValue) (any, error) {
	switch x := v.(type) {
	case *lua.LNilType:
		return nil, nil
	case lua.LBool:
		return bool(x), nil
	case lua.LString:
		return string(x), nil
	case lua.LNumber:
		return float64(x), nil
	case *lua.LTable:
		n := x.Len()
		count := 0
		x.ForEach(func(lua.LValue, lua.LValue) { count++ })
		if count == n {
			arr := make([]any, 0, n)
			for i := 1; i <= n; i++ {
				item, err := fromLua(x.RawGetInt(i))
				if err != nil {
					return nil, err
				}
				arr = append(arr, item)
			}
			return arr, nil
		}
		obj := map[string]any{}
		var err error
		x.ForEach(func(k, val lua.LValue) {
			ks, ok := k.(lua.LString)
			if err != nil {
				return
			}
			if !ok {
				err = fmt.Errorf("%w: non-string key %v in a table that is not an array", errUnsupported, k)
				return
			}
			obj[string(ks)], err = fromLua(val)
		})
		return obj, err
	}
	return nil, fmt.Errorf("%w: %s", errUnsupported, v.Type())
}
