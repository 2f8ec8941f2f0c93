package modelgen_test

import (
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/layermesh/layermesh/partition/modelgen"
)

// What `meshctl gen-model gpt --layers 2 --dim 64 -o gpt.onnx` does: look the
// kind up with the flags as options, build, write.
func ExampleGenerate() {
	m, cfg, err := modelgen.Generate("gpt", map[string]int{"layers": 2, "dim": 64, "vocab": 1000, "context": 128})
	if err != nil {
		log.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "modelgen")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := modelgen.WriteFile(m, filepath.Join(dir, "gpt.onnx")); err != nil {
		log.Fatal(err)
	}
	gpt := cfg.(modelgen.GPTConfig)
	inputs, err := cfg.ExampleInputs(1, 8, 0)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%d layers, %d heads, %d parameters\n", gpt.Layers, gpt.Heads, gpt.Params())
	fmt.Println(inputs[0].Name, inputs[0].Shape, "->", cfg.OutputNames())
	// Output:
	// 2 layers, 1 heads, 172288 parameters
	// input_ids [1 8] -> [logits]
}
