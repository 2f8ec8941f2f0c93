package pipeline

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/tensor"
)

// The rows of a batch: how a batched run's inputs are stacked from each step's and
// its outputs cut back into each step's, in Go memory for the small tensors a step
// sends (token ids, positions, the attention mask, hidden states) and in place for
// the logits a sampling step reads. The state is stacked and cut in the backend's
// memory (accel.HeldStacker).

// batchRow is one step's row of a batched run's held logits: it reads the batch's
// value in place, and the last of the batch's rows to be released releases it.
type batchRow struct {
	v        accel.Held
	i, n     int
	left     *atomic.Int32
	once     sync.Once
	released atomic.Bool
}

func (r *batchRow) DType() tensor.DType { return r.v.DType() }

func (r *batchRow) Shape() []int64 {
	s := r.v.Shape()
	s[0] = 1
	return s
}

func (r *batchRow) Bytes() int64 { return r.v.Bytes() / int64(r.n) }

func (r *batchRow) Tensor(name string) (tensor.Tensor, error) {
	data := make([]byte, r.Bytes())
	if _, err := r.ReadAt(data, 0); err != nil && !errors.Is(err, io.EOF) {
		return tensor.Tensor{}, err
	}
	return tensor.Tensor{Name: name, DType: r.DType(), Shape: r.Shape(), Data: data}, nil
}

func (r *batchRow) ReadAt(p []byte, off int64) (int, error) {
	size := r.Bytes()
	switch {
	case r.released.Load():
		return 0, fmt.Errorf("%w: held row was released", accel.ErrSessionClosed)
	case off < 0:
		return 0, fmt.Errorf("%w: read at offset %d", accel.ErrInputMismatch, off)
	case off >= size:
		return 0, io.EOF
	}
	want := len(p)
	n, err := r.v.ReadAt(p[:min(int64(want), size-off)], int64(r.i)*size+off)
	if err == nil && n < want {
		err = io.EOF
	}
	return n, err
}

func (r *batchRow) Release() {
	r.once.Do(func() {
		r.released.Store(true)
		if r.left.Add(-1) == 0 {
			r.v.Release()
		}
	})
}

// rowsOf is each step's value named name, in the batch's order.
func rowsOf[T any](batch []*batchItem, name string, of func(*batchItem) []T, nameOf func(T) string) ([]T, error) {
	rows := make([]T, len(batch))
	for i, it := range batch {
		vals := of(it)
		j := slices.IndexFunc(vals, func(v T) bool { return nameOf(v) == name })
		if j < 0 {
			return nil, fmt.Errorf("step %d has no input %q", i, name)
		}
		rows[i] = vals[j]
	}
	return rows, nil
}

// stackRows stacks rows (each with a first dimension of 1) along the first dimension,
// with axis > 0 padding each in front along axis to length (tensor.PadRow).
func stackRows(rows []tensor.Tensor, axis, length int) (tensor.Tensor, error) {
	first := rows[0]
	shapes := make([][]int64, len(rows))
	for i, r := range rows {
		if r.DType != first.DType {
			return tensor.Tensor{}, fmt.Errorf("row %d is %s, row 0 %s", i, r.DType, first.DType)
		}
		shapes[i] = r.Shape
	}
	shape, err := tensor.StackShape(first.DType, shapes, axis, length)
	if err != nil {
		return tensor.Tensor{}, err
	}
	total, err := tensor.ByteSize(first.DType, shape)
	if err != nil {
		return tensor.Tensor{}, err
	}
	data := make([]byte, total)
	span := int(total) / len(rows)
	for i, r := range rows {
		if err := tensor.PadRow(data[i*span:(i+1)*span], r.Data, r.Shape, first.DType.Size(), axis, length); err != nil {
			return tensor.Tensor{}, fmt.Errorf("row %d: %w", i, err)
		}
	}
	return tensor.Tensor{Name: first.Name, DType: first.DType, Shape: shape, Data: data}, nil
}

// cutRow copies row i of n out of a batched output.
func cutRow(t tensor.Tensor, i, n int) (tensor.Tensor, error) {
	if len(t.Shape) == 0 || t.Shape[0] != int64(n) || t.DType == tensor.String {
		return tensor.Tensor{}, fmt.Errorf("%s %v does not have the batch of %d first", t.DType, t.Shape, n)
	}
	span := len(t.Data) / n
	shape := slices.Clone(t.Shape)
	shape[0] = 1
	return tensor.Tensor{Name: t.Name, DType: t.DType, Shape: shape, Data: slices.Clone(t.Data[i*span : (i+1)*span])}, nil
}
