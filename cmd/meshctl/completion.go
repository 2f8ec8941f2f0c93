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
    -*) COMPREPLY=($(compgen -W "--addr --token --token-file --ca-cert --json --timeout --help" -- "$cur")) ;;
    *)  COMPREPLY=($(compgen -f -- "$cur")) ;;
  esac
}
complete -o filenames -F _meshctl meshctl
`

// zshCompletion completes command names with their summaries, the common flags and
// file names.
const zshCompletion = `#compdef meshctl
# meshctl zsh completion: meshctl completion zsh > "${fpath[1]}/_meshctl"
_meshctl() {
  local -a cmds
  cmds=(
%s
  )
  if (( CURRENT == 2 )); then
    _describe 'command' cmds
    return
  fi
  _arguments '*--addr[node API address]:address:' '*--token[API token]:token:' \
    '*--token-file[file holding the API token]:file:_files' '*--ca-cert[certificate to trust]:file:_files' '*--json[print JSON]' \
    '*--timeout[give up after this long]:duration:' '*:file:_files'
}
compdef _meshctl meshctl
`

// runCompletion prints a shell completion script.
func runCompletion(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) != 1 || (args[0] != "bash" && args[0] != "zsh") {
		return usagef("want: completion bash|zsh")
	}
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	if args[0] == "zsh" {
		lines := make([]string, len(names))
		for i, n := range names {
			summary := strings.NewReplacer("'", "", ":", " -", "[", "(", "]", ")").Replace(commands[n].summary)
			lines[i] = fmt.Sprintf("    '%s:%s'", n, summary)
		}
		_, err := fmt.Fprintf(stdout, zshCompletion, strings.Join(lines, "\n"))
		return err
	}
	_, err := fmt.Fprintf(stdout, bashCompletion, strings.Join(names, " "))
	return err
}
