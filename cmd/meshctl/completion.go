package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
)

// bashCompletion completes command names, the common flags and file names.
const bashCompletion = `# meshctl bash completion: source <(meshctl completion bash)
_meshctl() {
  local cur=${COMP_WORDS[COMP_CWORD]}
  if [[ $COMP_CWORD -eq 1 ]]; then
    COMPREPLY=($(compgen -W "%s" -- "$cur"))
    return
  fi
  case "$cur" in
    -*) COMPREPLY=($(compgen -W "--addr --token --token-file --json --timeout --help" -- "$cur")) ;;
    *)  COMPREPLY=($(compgen -f -- "$cur")) ;;
  esac
}
complete -o filenames -F _meshctl meshctl
`

// runCompletion prints a shell completion script.
func runCompletion(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) != 1 || args[0] != "bash" {
		return usagef("want: completion bash")
	}
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	_, err := fmt.Fprintf(stdout, bashCompletion, strings.Join(names, " "))
	return err
}
