package scenario

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// lines returns n numbered lines, "line 1\n" to "line n\n".
func lines(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("line %d\n", i+1)
	}
	return out
}

// changes returns the "-" and "+" lines of a diff, without the "---" and "+++" header.
func changes(diff string) (minus, plus []string) {
	for _, l := range strings.Split(diff, "\n") {
		switch {
		case strings.HasPrefix(l, "---"), strings.HasPrefix(l, "+++"):
		case strings.HasPrefix(l, "-"):
			minus = append(minus, l)
		case strings.HasPrefix(l, "+"):
			plus = append(plus, l)
		}
	}
	return minus, plus
}

func TestLineDiffEqualIsEmpty(t *testing.T) {
	for _, s := range []string{"", "a\n", strings.Join(lines(50), "")} {
		if d := LineDiff(s, s); d != "" {
			t.Errorf("LineDiff(%q, same) = %q, want \"\"", s, d)
		}
	}
}

func TestLineDiffInsertedLineIsOnePlus(t *testing.T) {
	want := lines(30)
	got := append(append(append([]string(nil), want[:10]...), "inserted\n"), want[10:]...)
	d := LineDiff(strings.Join(want, ""), strings.Join(got, ""))
	minus, plus := changes(d)
	if len(minus) != 0 || len(plus) != 1 || plus[0] != "+inserted" {
		t.Errorf("one inserted line: want no - and one +inserted, got - %q, + %q in:\n%s", minus, plus, d)
	}
	wantDiff := "--- want\n+++ got\n@@ -8,6 +8,7 @@\n line 8\n line 9\n line 10\n+inserted\n line 11\n line 12\n line 13\n"
	if d != wantDiff {
		t.Errorf("diff:\n%s\nwant:\n%s", d, wantDiff)
	}
}

func TestLineDiffChangedLineIsOneMinusOnePlus(t *testing.T) {
	want := lines(30)
	got := append([]string(nil), want...)
	got[14] = "changed\n"
	d := LineDiff(strings.Join(want, ""), strings.Join(got, ""))
	minus, plus := changes(d)
	if len(minus) != 1 || minus[0] != "-line 15" || len(plus) != 1 || plus[0] != "+changed" {
		t.Errorf("one changed line: want -line 15 and +changed, got - %q, + %q in:\n%s", minus, plus, d)
	}
}

func TestLineDiffHunks(t *testing.T) {
	for _, c := range []struct {
		name      string
		want, got string
		diff      string
	}{
		{"deleted first line", "a\nb\nc\n", "b\nc\n", "@@ -1,3 +1,2 @@\n-a\n b\n c\n"},
		{"appended to empty", "", "a\n", "@@ -0,0 +1 @@\n+a\n"},
		{"newline at end added", "a\nb", "a\nb\n", "@@ -1,2 +1,2 @@\n a\n-b\n\\ No newline at end of file\n+b\n"},
		{"distant changes, two hunks",
			strings.Join(lines(20), ""),
			strings.Replace(strings.Replace(strings.Join(lines(20), ""), "line 2\n", "two\n", 1), "line 19\n", "nineteen\n", 1),
			"@@ -1,5 +1,5 @@\n line 1\n-line 2\n+two\n line 3\n line 4\n line 5\n" +
				"@@ -16,5 +16,5 @@\n line 16\n line 17\n line 18\n-line 19\n+nineteen\n line 20\n"},
		{"near changes, one hunk",
			strings.Join(lines(12), ""),
			strings.Replace(strings.Replace(strings.Join(lines(12), ""), "line 2\n", "two\n", 1), "line 9\n", "nine\n", 1),
			"@@ -1,12 +1,12 @@\n line 1\n-line 2\n+two\n line 3\n line 4\n line 5\n line 6\n line 7\n line 8\n-line 9\n+nine\n line 10\n line 11\n line 12\n"},
	} {
		if d, want := LineDiff(c.want, c.got), "--- want\n+++ got\n"+c.diff; d != want {
			t.Errorf("%s: diff:\n%s\nwant:\n%s", c.name, d, want)
		}
	}
}

// TestLineDiffAgreesWithDiff checks random edits against the lines diff -u removes and adds.
// LineDiff must be a shortest diff: as many changed lines as diff -u finds, applying to want to
// give got.
func TestLineDiffAgreesWithDiff(t *testing.T) {
	if _, err := exec.LookPath("diff"); err != nil {
		t.Skip("no diff command")
	}
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 100 {
		a := randomLines(r)
		b := editLines(r, a)
		want, got := strings.Join(a, ""), strings.Join(b, "")
		d := LineDiff(want, got)
		if applied := apply(t, want, d); applied != got {
			t.Fatalf("case %d: applying\n%s\nto %q gives %q, want %q", i, d, want, applied, got)
		}
		wf, gf := filepath.Join(dir, "want"), filepath.Join(dir, "got")
		if err := os.WriteFile(wf, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(gf, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		out, _ := exec.Command("diff", "-d", "-u", wf, gf).Output()
		m1, p1 := changes(string(out))
		m2, p2 := changes(d)
		if len(m1)+len(p1) != len(m2)+len(p2) {
			t.Fatalf("case %d: LineDiff changes %d lines, diff -u %d:\n%s\ndiff -u:\n%s", i, len(m2)+len(p2), len(m1)+len(p1), d, out)
		}
	}
}

// TestLineDiffFarApartIsBounded checks that inputs further apart than diffMaxEdits give the
// middle of want removed and that of got added, in at most diffMaxLines lines.
func TestLineDiffFarApartIsBounded(t *testing.T) {
	a, b := lines(3000), lines(3000)
	for i := range b {
		b[i] = "other " + b[i]
	}
	d := LineDiff(strings.Join(a, ""), strings.Join(b, ""))
	shown := strings.Split(strings.TrimSuffix(d, "\n"), "\n")
	// The header, diffMaxLines lines, then the count of the others: one hunk header and
	// 6000 changed lines in all.
	wantLast := fmt.Sprintf("... %d more lines of diff", 1+6000-diffMaxLines)
	if len(shown) != 2+diffMaxLines+1 || shown[2] != "@@ -1,3000 +1,3000 @@" || shown[len(shown)-1] != wantLast {
		t.Errorf("diff of %d lines, hunk %q, last line %q; want %d lines, \"@@ -1,3000 +1,3000 @@\", %q",
			len(shown), shown[2], shown[len(shown)-1], 2+diffMaxLines+1, wantLast)
	}
}

func randomLines(r *rand.Rand) []string {
	out := make([]string, r.IntN(40))
	for i := range out {
		out[i] = fmt.Sprintf("%c\n", 'a'+r.IntN(4))
	}
	return out
}

func editLines(r *rand.Rand, a []string) []string {
	b := append([]string(nil), a...)
	for range r.IntN(6) {
		switch i := r.IntN(len(b) + 1); {
		case r.IntN(2) == 0 && i < len(b):
			b = append(b[:i], b[i+1:]...)
		default:
			b = append(b[:i], append([]string{fmt.Sprintf("%c\n", 'a'+r.IntN(5))}, b[i:]...)...)
		}
	}
	return b
}

// apply applies a unified diff from LineDiff to want.
func apply(t *testing.T, want, diff string) string {
	t.Helper()
	if diff == "" {
		return want
	}
	a := splitLines(want)
	var out []string
	ai := 0
	body := strings.Split(strings.TrimSuffix(diff, "\n"), "\n")[2:]
	for i := 0; i < len(body); i++ {
		l := body[i]
		line := l[1:] + "\n"
		if i+1 < len(body) && body[i+1] == `\ No newline at end of file` {
			line = l[1:]
			i++
		}
		switch l[0] {
		case '@':
			var start, n int
			fmt.Sscanf(l, "@@ -%d", &start)
			if strings.HasPrefix(l, fmt.Sprintf("@@ -%d,0 ", start)) {
				n = start
			} else {
				n = start - 1
			}
			out = append(out, a[ai:n]...)
			ai = n
		case ' ':
			if a[ai] != line {
				t.Fatalf("context %q does not match want's line %d %q", line, ai+1, a[ai])
			}
			out = append(out, line)
			ai++
		case '-':
			if a[ai] != line {
				t.Fatalf("removed %q is not want's line %d %q", line, ai+1, a[ai])
			}
			ai++
		case '+':
			out = append(out, line)
		}
	}
	return strings.Join(append(out, a[ai:]...), "")
}
