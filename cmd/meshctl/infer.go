package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/layermesh/layermesh/accel/tensor"
	"github.com/layermesh/layermesh/api/client"
	"github.com/layermesh/layermesh/api/wire"
)

// keyValues is a repeatable NAME=VALUE flag, kept in the order given.
type keyValues struct {
	keys []string
	vals map[string]string
}

func (kv *keyValues) String() string { return strings.Join(kv.keys, ",") }

func (kv *keyValues) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	if !ok || k == "" {
		return fmt.Errorf("want NAME=VALUE, got %q", v)
	}
	if kv.vals == nil {
		kv.vals = map[string]string{}
	}
	if _, dup := kv.vals[k]; !dup {
		kv.keys = append(kv.keys, k)
	}
	kv.vals[k] = val
	return nil
}

func inferFlags(fs *flag.FlagSet) step {
	var inputs, shapes, dtypes keyValues
	var outputs stringsFlag
	fs.Var(&inputs, "input", "NAME=1,2,3 (inline), NAME=@file.json or NAME=@file.npy; repeatable")
	fs.Var(&shapes, "shape", "NAME=1x3: shape of an inline or JSON input (default: from the model)")
	fs.Var(&dtypes, "datatype", "NAME=FP32: KServe datatype of an inline or JSON input (default: from the model)")
	fs.Var(&outputs, "output", "output to return (repeatable; default: all)")
	version := fs.String("version", "", "model version (default: latest)")
	jsonWire := fs.Bool("json-wire", false, "send and receive JSON tensors instead of the binary tensor extension")
	maxValues := fs.Int("max-values", 16, "values of each output to print in the table (0: all)")
	check := func(pos []string) error {
		if len(pos) != 1 {
			return usagef("want exactly one MODEL, got %q", pos)
		}
		if len(inputs.keys) == 0 {
			return usagef("give at least one --input")
		}
		return nil
	}
	return step{check: check, call: func(ctx context.Context, in invocation) (output, error) {
		model := in.pos[0]
		// The model's signature fills in what the command line leaves out.
		md, err := in.client.ModelMetadata(ctx, model, *version)
		if err != nil {
			return output{}, err
		}
		req := &wire.Request{BinaryOutputs: !*jsonWire}
		for _, name := range inputs.keys {
			var sig *wire.TensorMetadata
			for i := range md.Inputs {
				if md.Inputs[i].Name == name {
					sig = &md.Inputs[i]
				}
			}
			if sig == nil {
				names := make([]string, len(md.Inputs))
				for i, in := range md.Inputs {
					names[i] = in.Name
				}
				return output{}, usagef("model %s has no input %q (inputs: %s)", model, name, strings.Join(names, ", "))
			}
			t, err := buildInput(name, inputs.vals[name], shapes.vals[name], dtypes.vals[name], sig)
			if err != nil {
				return output{}, err
			}
			req.Inputs = append(req.Inputs, t)
		}
		for _, o := range outputs {
			req.Outputs = append(req.Outputs, wire.OutputRequest{Name: o, Binary: !*jsonWire})
		}
		resp, err := in.client.Infer(ctx, model, req, client.InferOptions{Version: *version, BinaryInputs: !*jsonWire})
		if err != nil {
			return output{}, err
		}
		out := output{human: func(w io.Writer) error { return printOutputs(w, resp, *maxValues) }}
		if in.json {
			// The response as the node would send it with every output in JSON.
			header, _, err := wire.EncodeResponse(resp, func(string) bool { return false })
			if err != nil {
				return output{}, err
			}
			out.value = rawJSON(header)
		}
		return out, nil
	}}
}

type stringsFlag []string

func (s *stringsFlag) String() string     { return strings.Join(*s, ",") }
func (s *stringsFlag) Set(v string) error { *s = append(*s, v); return nil }

// buildInput makes one input tensor from an inline list, a JSON file or a .npy file.
func buildInput(name, value, shapeArg, dtypeArg string, sig *wire.TensorMetadata) (tensor.Tensor, error) {
	if file, ok := strings.CutPrefix(value, "@"); ok && strings.HasSuffix(strings.ToLower(file), ".npy") {
		t, err := tensor.ReadNPYFile(file)
		if err != nil {
			return tensor.Tensor{}, err
		}
		t.Name = name
		return t, nil
	}
	datatype := dtypeArg
	if datatype == "" {
		datatype = sig.Datatype
	}
	var data []byte
	var shape []int64
	if file, ok := strings.CutPrefix(value, "@"); ok {
		b, err := os.ReadFile(file)
		if err != nil {
			return tensor.Tensor{}, err
		}
		// Either a bare (nested) array or a KServe input object.
		var obj struct {
			Shape    []int64         `json:"shape"`
			Datatype string          `json:"datatype"`
			Data     json.RawMessage `json:"data"`
		}
		if trimmed := strings.TrimSpace(string(b)); strings.HasPrefix(trimmed, "{") {
			if err := json.Unmarshal(b, &obj); err != nil {
				return tensor.Tensor{}, fmt.Errorf("%s: %w", file, err)
			}
			data, shape = obj.Data, obj.Shape
			if obj.Datatype != "" && dtypeArg == "" {
				datatype = obj.Datatype
			}
		} else {
			data = b
			shape = nestedShape(b)
		}
	} else {
		data = inlineJSON(value, datatype)
	}
	if shapeArg != "" {
		var err error
		if shape, err = parseShape(shapeArg); err != nil {
			return tensor.Tensor{}, usagef("--shape %s=%s: %v", name, shapeArg, err)
		}
	}
	if shape == nil {
		n := countScalars(data)
		var err error
		if shape, err = fitShape(sig.Shape, n); err != nil {
			return tensor.Tensor{}, usagef("input %s: %v; give --shape %s=...", name, err, name)
		}
	}
	return wire.TensorFromJSON(name, datatype, shape, data)
}

// inlineJSON turns "1,2,3" into a JSON array; BYTES elements become strings.
func inlineJSON(v, datatype string) []byte {
	parts := strings.Split(v, ",")
	b := []byte{'['}
	for i, p := range parts {
		if i > 0 {
			b = append(b, ',')
		}
		p = strings.TrimSpace(p)
		if strings.EqualFold(datatype, "BYTES") {
			b = strconv.AppendQuote(b, p)
		} else {
			b = append(b, p...)
		}
	}
	return append(b, ']')
}

// parseShape reads 1x3, 1,3 or [1,3].
func parseShape(s string) ([]int64, error) {
	s = strings.Trim(strings.TrimSpace(s), "[]")
	if s == "" {
		return []int64{}, nil
	}
	f := strings.FieldsFunc(s, func(r rune) bool { return r == 'x' || r == ',' || r == 'X' })
	out := make([]int64, len(f))
	for i, d := range f {
		v, err := strconv.ParseInt(strings.TrimSpace(d), 10, 64)
		if err != nil || v < 0 {
			return nil, fmt.Errorf("bad dim %q", d)
		}
		out[i] = v
	}
	return out, nil
}

// fitShape picks the shape for n values from the model's input shape: fixed dims as
// they are, a single dynamic dim whatever makes the count right.
func fitShape(sig []int64, n int64) ([]int64, error) {
	shape := append([]int64{}, sig...)
	fixed, dyn := int64(1), -1
	for i, d := range shape {
		if d < 0 {
			if dyn >= 0 {
				return nil, fmt.Errorf("the model's shape %v has several dynamic dims", sig)
			}
			dyn = i
			continue
		}
		fixed *= d
	}
	switch {
	case dyn < 0 && fixed == n:
		return shape, nil
	case dyn >= 0 && fixed > 0 && n%fixed == 0:
		shape[dyn] = n / fixed
		return shape, nil
	}
	return nil, fmt.Errorf("%d values do not fit the model's shape %v", n, sig)
}

// nestedShape is the shape of a nested JSON array ([[1,2],[3,4]] is [2 2]), or nil
// for a flat one, whose shape then comes from the model.
func nestedShape(b []byte) []int64 {
	var v any
	if json.Unmarshal(b, &v) != nil {
		return nil
	}
	var shape []int64
	for {
		a, ok := v.([]any)
		if !ok {
			break
		}
		shape = append(shape, int64(len(a)))
		if len(a) == 0 {
			break
		}
		v = a[0]
	}
	if len(shape) <= 1 {
		return nil
	}
	return shape
}

// countScalars counts the leaves of a JSON array.
func countScalars(b []byte) int64 {
	var v any
	if json.Unmarshal(b, &v) != nil {
		return 0
	}
	var count func(any) int64
	count = func(v any) int64 {
		a, ok := v.([]any)
		if !ok {
			return 1
		}
		var n int64
		for _, e := range a {
			n += count(e)
		}
		return n
	}
	return count(v)
}

func printOutputs(w io.Writer, resp *wire.Response, maxValues int) error {
	fmt.Fprintf(w, "model %s version %s\n", resp.ModelName, resp.ModelVersion)
	for i := range resp.Outputs {
		t := &resp.Outputs[i]
		fmt.Fprintf(w, "%s %s %v:", t.Name, t.DType.KServe(), t.Shape)
		n := t.NumElements()
		shown := n
		if maxValues > 0 && shown > int64(maxValues) {
			shown = int64(maxValues)
		}
		if t.DType == tensor.String {
			for _, s := range t.Strings[:shown] {
				fmt.Fprintf(w, " %q", s)
			}
		} else {
			head := tensor.Tensor{Name: t.Name, DType: t.DType, Shape: []int64{shown}, Data: t.Data[:shown*int64(t.DType.Size())]}
			vals, err := head.Float64s()
			if err != nil {
				return err
			}
			for _, v := range vals {
				fmt.Fprintf(w, " %s", strconv.FormatFloat(v, 'g', 6, 64))
			}
		}
		if shown < n {
			fmt.Fprintf(w, " ... (%d values)", n)
		}
		fmt.Fprintln(w)
	}
	return nil
}
