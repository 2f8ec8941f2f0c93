package ort

import (
	"fmt"
	"slices"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/tensor"
)

// StackHeld stacks held rows into a new value in ONNX Runtime's memory
// (accel.HeldStacker): one copy of each row, and no Go memory on the way.
func (p *ortPool) StackHeld(rows []accel.Held, axis, length int) (accel.Held, error) {
	if len(rows) == 0 {
		return nil, fmt.Errorf("%w: no rows to stack", accel.ErrInputMismatch)
	}
	vals := make([]*heldValue, len(rows))
	shapes := make([][]int64, len(rows))
	for i, r := range rows {
		v, ok := r.(*heldValue)
		if !ok {
			return nil, fmt.Errorf("%w: row %d is not a value held by ONNX Runtime", accel.ErrInputMismatch, i)
		}
		if i > 0 && v.dtype != vals[0].dtype {
			return nil, fmt.Errorf("%w: row %d is %s, row 0 %s", accel.ErrInputMismatch, i, v.dtype, vals[0].dtype)
		}
		vals[i], shapes[i] = v, v.shape
	}
	first := vals[0]
	shape, err := tensor.StackShape(first.dtype, shapes, axis, length)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", accel.ErrInputMismatch, err)
	}
	out, err := allocHeld(first.dtype, shape)
	if err != nil {
		return nil, fmt.Errorf("stacking %d rows of %v: %w", len(rows), first.shape, err)
	}
	span := int(out.bytes) / len(rows)
	dst := out.bytesView()
	for i, v := range vals {
		if err := v.copyRow(dst[i*span:(i+1)*span], axis, length); err != nil {
			out.Release()
			return nil, fmt.Errorf("row %d: %w", i, err)
		}
	}
	return out, nil
}

// copyRow pads the value into dst (tensor.PadRow), holding it live meanwhile.
func (h *heldValue) copyRow(dst []byte, axis, length int) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.v == nil {
		return fmt.Errorf("%w: held value was released", accel.ErrSessionClosed)
	}
	return tensor.PadRow(dst, h.bytesView(), h.shape, h.dtype.Size(), axis, length)
}

// CutHeld copies row i of a held value, less its first pad positions along axis, into
// a new value in ONNX Runtime's memory (accel.HeldStacker).
func (p *ortPool) CutHeld(h accel.Held, i, axis, pad int) (accel.Held, error) {
	v, ok := h.(*heldValue)
	if !ok {
		return nil, fmt.Errorf("%w: not a value held by ONNX Runtime", accel.ErrInputMismatch)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.v == nil {
		return nil, fmt.Errorf("%w: held value was released", accel.ErrSessionClosed)
	}
	if len(v.shape) == 0 || v.dtype == tensor.String || i < 0 || int64(i) >= v.shape[0] || axis >= len(v.shape) ||
		(axis > 0 && (pad < 0 || int64(pad) > v.shape[axis])) {
		return nil, fmt.Errorf("%w: no row %d less %d positions along axis %d in %s %v", accel.ErrInputMismatch, i, pad, axis, v.dtype, v.shape)
	}
	row := slices.Clone(v.shape)
	row[0] = 1
	shape := slices.Clone(row)
	if axis > 0 {
		shape[axis] -= int64(pad)
	}
	out, err := allocHeld(v.dtype, shape)
	if err != nil {
		return nil, fmt.Errorf("cutting row %d of %v: %w", i, v.shape, err)
	}
	span := int(v.bytes / v.shape[0])
	if err := tensor.UnpadRow(out.bytesView(), v.bytesView()[i*span:(i+1)*span], row, v.dtype.Size(), axis, pad); err != nil {
		out.Release()
		return nil, err
	}
	return out, nil
}

var _ accel.HeldStacker = (*ortPool)(nil)
