# zsh -f zsh_complete.zsh SCRIPT DIR LINE...
# Completes each LINE (as if TAB were pressed at its end) in an interactive
# zsh run in a pseudo-terminal, with compinit and the completion SCRIPT
# loaded, in directory DIR. Prints "=== LINE", then each match offered on a
# line of its own. Used by TestZshCompletion.
zmodload zsh/zpty || exit 1
zpty z zsh -f -i
zpty -w z 'PS1="> "; autoload -U compinit; compinit -u -D; source '${(q)1}'; cd '${(q)2}
# Print every match added, except by the calls that only collect (-O, -A, -D).
zpty -w z 'compadd() { if (( ${argv[(I)-[OAD]*]} )); then builtin compadd "$@"; return; fi; local -a h; builtin compadd -A h "$@"; local m; for m in $h; do print -r -- $'"'"'\nMATCH:'"'"'$m; done; builtin compadd "$@"; }'
# Each step ends by running a command whose output (not its echo) marks
# the end of what the step printed.
local out n=0
zpty -w z 'print SYNC$((40+2))'
zpty -r z out '*SYNC42*' || exit 1
shift 2
for line in "$@"; do
  (( n++ ))
  zpty -w -n z "$line"$'\t\C-e\C-u'"print END\$((1000+$n))"$'\n'
  zpty -r z out "*END$((1000+n))*" || exit 1
  print -r -- "=== $line"
  print -rl -- ${${(M)${(f)out}:#*MATCH:*}##*MATCH:} | tr -d '\r'
done
zpty -d z
