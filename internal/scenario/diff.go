package scenario

import (
	"fmt"
	"strings"
)

// Limits of LineDiff, which only ever runs on a failing test.
const (
	// diffContext is the number of unchanged lines shown around each change.
	diffContext = 3
	// diffMaxEdits bounds the edit distance LineDiff searches for a shortest diff (the search
	// keeps memory in its square); inputs further apart are shown as the differing
	// middle of want removed, then that of got added.
	diffMaxEdits = 2000
	// diffMaxLines bounds the lines of a diff; the rest is counted, not shown.
	diffMaxLines = 300
)

// LineDiff returns a unified diff from want to got (lines of want marked "-", of got "+",
// unchanged ones " ", in hunks headed "@@ -line,count +line,count @@"), or "" when they are
// equal. It is a shortest line diff (Myers), so one inserted line shows as one "+" line.
func LineDiff(want, got string) string {
	if want == got {
		return ""
	}
	a, b := splitLines(want), splitLines(got)
	ops := diffLines(a, b)
	var out strings.Builder
	out.WriteString("--- want\n+++ got\n")
	shown, total := 0, 0
	emit := func(s string) {
		total++
		if shown < diffMaxLines {
			out.WriteString(s)
			out.WriteByte('\n')
			shown++
		}
	}
	for _, h := range hunks(ops) {
		emit(h.header())
		for _, op := range ops[h.first:h.end] {
			line, eol := strings.CutSuffix(op.line, "\n")
			emit(string(op.kind) + line)
			if !eol {
				emit(`\ No newline at end of file`)
			}
		}
	}
	if total > shown {
		fmt.Fprintf(&out, "... %d more lines of diff\n", total-shown)
	}
	return out.String()
}

// splitLines splits s after each newline; the last line lacks one when s does not end in one.
func splitLines(s string) []string {
	lines := strings.SplitAfter(s, "\n")
	if lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	return lines
}

// diffOp is one line of an edit script from a to b: kept (' '), removed from a ('-') or added
// from b ('+'). ai and bi are the numbers of lines of a and of b before it.
type diffOp struct {
	kind   byte
	line   string
	ai, bi int
}

// diffLines returns a shortest edit script from a to b, in order.
func diffLines(a, b []string) []diffOp {
	// The common prefix and suffix are kept as they are; only the middle is searched.
	pre := 0
	for pre < len(a) && pre < len(b) && a[pre] == b[pre] {
		pre++
	}
	suf := 0
	for suf < len(a)-pre && suf < len(b)-pre && a[len(a)-1-suf] == b[len(b)-1-suf] {
		suf++
	}
	ops := make([]diffOp, 0, len(a)+len(b))
	for i := range pre {
		ops = append(ops, diffOp{' ', a[i], i, i})
	}
	am, bm := a[pre:len(a)-suf], b[pre:len(b)-suf]
	for _, op := range myers(am, bm) {
		op.ai += pre
		op.bi += pre
		ops = append(ops, op)
	}
	for i := range suf {
		ai, bi := len(a)-suf+i, len(b)-suf+i
		ops = append(ops, diffOp{' ', a[ai], ai, bi})
	}
	return ops
}

// myers returns a shortest edit script from a to b with Myers' greedy algorithm, or, when
// that needs more than diffMaxEdits edits, all of a removed and then all of b added.
func myers(a, b []string) []diffOp {
	n, m := len(a), len(b)
	// v[off+k] is the furthest x reached on diagonal k = x-y; trace[d] is v over diagonals
	// -d..d before step d, from which the path is walked back.
	off := n + m + 1
	v := make([]int, 2*off+1)
	var trace [][]int
	for d := 0; d <= min(n+m, diffMaxEdits); d++ {
		trace = append(trace, append([]int(nil), v[off-d:off+d+1]...))
		for k := -d; k <= d; k += 2 {
			var x int
			if k == -d || (k != d && v[off+k-1] < v[off+k+1]) {
				x = v[off+k+1] // down: add b[y-1]
			} else {
				x = v[off+k-1] + 1 // right: remove a[x-1]
			}
			y := x - k
			for x < n && y < m && a[x] == b[y] {
				x, y = x+1, y+1
			}
			v[off+k] = x
			if x >= n && y >= m {
				return backtrack(a, b, trace)
			}
		}
	}
	ops := make([]diffOp, 0, n+m)
	for i, l := range a {
		ops = append(ops, diffOp{'-', l, i, 0})
	}
	for i, l := range b {
		ops = append(ops, diffOp{'+', l, n, i})
	}
	return ops
}

// backtrack walks the path myers found from its end to its start and returns it in order.
func backtrack(a, b []string, trace [][]int) []diffOp {
	var rev []diffOp
	x, y := len(a), len(b)
	for d := len(trace) - 1; d > 0; d-- {
		vd := trace[d] // vd[d+k] is diagonal k after step d-1
		k := x - y
		pk := k - 1
		if k == -d || (k != d && vd[d+k-1] < vd[d+k+1]) {
			pk = k + 1
		}
		px := vd[d+pk]
		py := px - pk
		// The step ends at (px, py+1) when it added b[py], at (px+1, py) when it removed
		// a[px]; a run of kept lines leads from there to (x, y).
		step := diffOp{'+', "", px, py}
		mx := px
		if pk == k+1 {
			step.line = b[py]
		} else {
			step.kind, step.line = '-', a[px]
			mx = px + 1
		}
		for x > mx {
			rev = append(rev, diffOp{' ', a[x-1], x - 1, y - 1})
			x, y = x-1, y-1
		}
		rev = append(rev, step)
		x, y = px, py
	}
	for x > 0 {
		rev = append(rev, diffOp{' ', a[x-1], x - 1, y - 1})
		x, y = x-1, y-1
	}
	for i, j := 0, len(rev)-1; i < j; i, j = i+1, j-1 {
		rev[i], rev[j] = rev[j], rev[i]
	}
	return rev
}

// hunk is ops[first:end] of an edit script: changes with up to diffContext kept lines
// around them.
type hunk struct {
	first, end   int
	aStart, aLen int
	bStart, bLen int
}

// hunks groups the changes of ops into hunks, merging those whose context would touch.
func hunks(ops []diffOp) []hunk {
	var out []hunk
	for i := 0; i < len(ops); {
		if ops[i].kind == ' ' {
			i++
			continue
		}
		first := max(0, i-diffContext)
		// Extend past changes and runs of at most 2*diffContext kept lines between them.
		end := i
		for end < len(ops) {
			if ops[end].kind != ' ' {
				end++
				continue
			}
			run := end
			for run < len(ops) && ops[run].kind == ' ' {
				run++
			}
			if run == len(ops) || run-end > 2*diffContext {
				end = min(end+diffContext, len(ops))
				break
			}
			end = run
		}
		h := hunk{first: first, end: end, aStart: ops[first].ai, bStart: ops[first].bi}
		for _, op := range ops[first:end] {
			if op.kind != '+' {
				h.aLen++
			}
			if op.kind != '-' {
				h.bLen++
			}
		}
		out = append(out, h)
		i = end
	}
	return out
}

// header returns the hunk's "@@ -a,n +b,m @@" line, numbered as diff -u numbers it: from 1,
// with the count left out when it is 1, and an empty range starting at the line before it.
func (h hunk) header() string {
	rng := func(start, n int) string {
		switch n {
		case 0:
			return fmt.Sprintf("%d,0", start)
		case 1:
			return fmt.Sprintf("%d", start+1)
		}
		return fmt.Sprintf("%d,%d", start+1, n)
	}
	return fmt.Sprintf("@@ -%s +%s @@", rng(h.aStart, h.aLen), rng(h.bStart, h.bLen))
}
