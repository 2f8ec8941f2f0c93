package consensus

import (
	"reflect"
	"strings"
	"testing"
)

// A PutModel carries a deploy's compression through the envelope, and an entry
// written before deploys recorded compression decodes with none.
func TestPutModelCarriesCompression(t *testing.T) {
	comp := &CompressionInfo{Quantize: "int8", BlockSize: 32, Prune: 0.25, Verify: 4, MaxError: 0.05,
		SizeBefore: 1000, SizeAfter: 300, VerifySamples: 4, MaxAbs: 0.01, MaxRel: 0.005, MinCosine: 0.9999, MinTop1: 1}
	for _, c := range []*CompressionInfo{comp, nil} {
		model := Model{Name: "m", SourceSHA256: "ab", Deploy: DeployInfo{Replicas: 1, Compression: c}}
		data, err := EncodeCommand(NewCommand(PutModel{Model: model}))
		if err != nil {
			t.Fatal(err)
		}
		if c == nil && strings.Contains(string(data), "compression") {
			t.Errorf("a deploy without compression writes a compression field: %s", data)
		}
		got, err := DecodeCommand(data)
		if err != nil {
			t.Fatal(err)
		}
		pm, ok := got.Payload.(PutModel)
		if !ok || !reflect.DeepEqual(pm.Model.Deploy.Compression, c) {
			t.Errorf("decoded %#v, want compression %+v", got.Payload, c)
		}
	}
}
