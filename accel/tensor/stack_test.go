package tensor

import (
	"bytes"
	"errors"
	"slices"
	"testing"
)

// TestPadRowRoundTrip: a [1, 2, n, 2] row of int8 padded to length 4 along axis 2
// lies at the end of each of its 2 blocks after zeros, and unpadding gives it back;
// along axis 0 the row is copied as it is.
func TestPadRowRoundTrip(t *testing.T) {
	src := []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12} // [1, 2, 3, 2]
	shape := []int64{1, 2, 3, 2}
	dst := bytes.Repeat([]byte{0xff}, 16)
	if err := PadRow(dst, src, shape, 1, 2, 4); err != nil {
		t.Fatal(err)
	}
	if want := []byte{0, 0, 1, 2, 3, 4, 5, 6, 0, 0, 7, 8, 9, 10, 11, 12}; !bytes.Equal(dst, want) {
		t.Fatalf("padded %v, want %v", dst, want)
	}
	back := make([]byte, len(src))
	if err := UnpadRow(back, dst, []int64{1, 2, 4, 2}, 1, 2, 1); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back, src) {
		t.Fatalf("unpadded %v, want %v", back, src)
	}
	whole := make([]byte, len(src))
	if err := PadRow(whole, src, shape, 1, 0, 0); err != nil || !bytes.Equal(whole, src) {
		t.Fatalf("copied along axis 0: %v, %v", whole, err)
	}
	for name, err := range map[string]error{
		"longer than the span":   PadRow(make([]byte, 8), src, shape, 1, 2, 2),
		"a span of another size": PadRow(make([]byte, 15), src, shape, 1, 2, 4),
		"more padding than rows": UnpadRow(back, dst, []int64{1, 2, 4, 2}, 1, 2, 5),
		"a short destination":    UnpadRow(back[:4], dst, []int64{1, 2, 4, 2}, 1, 2, 1),
	} {
		if !errors.Is(err, ErrBadShape) && !errors.Is(err, ErrDataLength) {
			t.Errorf("%s: %v, want a shape or length error", name, err)
		}
	}
}

// TestStackShape: rows stack along the first dimension, to the longest along the
// length axis; rows that differ elsewhere, or are not rows, are refused.
func TestStackShape(t *testing.T) {
	got, err := StackShape(Float32, [][]int64{{1, 2, 3, 4}, {1, 2, 5, 4}}, 2, 6)
	if err != nil || !slices.Equal(got, []int64{2, 2, 6, 4}) {
		t.Fatalf("StackShape = %v, %v; want [2 2 6 4]", got, err)
	}
	for name, rows := range map[string][][]int64{
		"another head count": {{1, 2, 3, 4}, {1, 3, 3, 4}},
		"a batch of 2":       {{2, 2, 3, 4}},
		"longer than 6":      {{1, 2, 7, 4}},
		"another rank":       {{1, 2, 3, 4}, {1, 2, 3}},
	} {
		if _, err := StackShape(Float32, rows, 2, 6); !errors.Is(err, ErrBadShape) {
			t.Errorf("%s: %v, want ErrBadShape", name, err)
		}
	}
	if _, err := StackShape(String, [][]int64{{1}}, 0, 0); !errors.Is(err, ErrBadShape) {
		t.Errorf("strings: %v, want ErrBadShape", err)
	}
}
