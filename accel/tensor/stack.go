package tensor

import "fmt"

// Rows of a batch. A batch stacks tensors whose first dimension is 1 (rows) along
// that dimension. A row shorter than the batch along one axis (a session's KV cache
// with a shorter past) is padded in front along that axis, so that its own data lies
// at the end of its span; the padding is zeros. These copy one row between its own
// bytes and its span in a batch's, wherever both live (Go memory or a backend's).

// rowLayout is a row's shape around axis: outer blocks before it, each of length
// positions of inner bytes.
func rowLayout(shape []int64, elem, axis int) (outer, inner int) {
	outer, inner = 1, elem
	for _, d := range shape[1:axis] {
		outer *= int(d)
	}
	for _, d := range shape[axis+1:] {
		inner *= int(d)
	}
	return outer, inner
}

// PadRow copies src, a row of shape (elements of elem bytes), into dst, its span in a
// batch whose length along axis is length: with axis > 0 each block's data follows
// length-shape[axis] zeroed positions; with axis <= 0 the row is copied as it is.
func PadRow(dst, src []byte, shape []int64, elem, axis, length int) error {
	if axis <= 0 {
		if len(dst) != len(src) {
			return fmt.Errorf("%w: a row of %d bytes into a span of %d", ErrDataLength, len(src), len(dst))
		}
		copy(dst, src)
		return nil
	}
	if axis >= len(shape) || int(shape[axis]) > length {
		return fmt.Errorf("%w: a row of shape %v does not pad to %d along axis %d", ErrBadShape, shape, length, axis)
	}
	outer, inner := rowLayout(shape, elem, axis)
	own, span := int(shape[axis])*inner, length*inner
	if len(src) != outer*own || len(dst) != outer*span {
		return fmt.Errorf("%w: a row of shape %v in %d bytes into a span of %d", ErrDataLength, shape, len(src), len(dst))
	}
	for o := range outer {
		block := dst[o*span : (o+1)*span]
		clear(block[:span-own])
		copy(block[span-own:], src[o*own:(o+1)*own])
	}
	return nil
}

// UnpadRow copies src, a row of a batch with shape (its padded length along axis),
// less its first pad positions along axis into dst; with axis <= 0 the row is copied
// as it is.
func UnpadRow(dst, src []byte, shape []int64, elem, axis, pad int) error {
	if axis <= 0 {
		if len(dst) != len(src) {
			return fmt.Errorf("%w: a row of %d bytes into %d", ErrDataLength, len(src), len(dst))
		}
		copy(dst, src)
		return nil
	}
	if axis >= len(shape) || pad < 0 || int64(pad) > shape[axis] {
		return fmt.Errorf("%w: a row of shape %v has no %d padding positions along axis %d", ErrBadShape, shape, pad, axis)
	}
	outer, inner := rowLayout(shape, elem, axis)
	span, skip := int(shape[axis])*inner, pad*inner
	if len(src) != outer*span || len(dst) != outer*(span-skip) {
		return fmt.Errorf("%w: a row of shape %v in %d bytes, less %d positions, into %d", ErrDataLength, shape, len(src), pad, len(dst))
	}
	for o := range outer {
		copy(dst[o*(span-skip):(o+1)*(span-skip)], src[o*span+skip:(o+1)*span])
	}
	return nil
}

// StackShape is the shape of rows of dtype d and these shapes stacked along the first
// dimension: each row's first dimension must be 1 and its others those of the first
// row, except along axis (axis > 0), where the stack's length is length and no row
// may be longer.
func StackShape(d DType, shapes [][]int64, axis, length int) ([]int64, error) {
	if len(shapes) == 0 {
		return nil, fmt.Errorf("%w: no rows to stack", ErrBadShape)
	}
	first := shapes[0]
	if len(first) == 0 || d == String || axis >= len(first) {
		return nil, fmt.Errorf("%w: %s rows of shape %v do not stack along axis %d", ErrBadShape, d, first, axis)
	}
	shape := append([]int64(nil), first...)
	if axis > 0 {
		shape[axis] = int64(length)
	}
	shape[0] = int64(len(shapes))
	for i, s := range shapes {
		if len(s) != len(shape) || s[0] != 1 {
			return nil, fmt.Errorf("%w: row %d has shape %v, not a row like %v", ErrBadShape, i, s, first)
		}
		for k := 1; k < len(shape); k++ {
			if (k != axis && s[k] != shape[k]) || (k == axis && s[k] > shape[k]) {
				return nil, fmt.Errorf("%w: row %d has shape %v, the first %v, stacked %v", ErrBadShape, i, s, first, shape)
			}
		}
	}
	if _, err := ByteSize(d, shape); err != nil {
		return nil, err
	}
	return shape, nil
}
