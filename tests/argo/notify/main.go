// Command notify renders an Argo Rollouts notification body the way the notifications engine does: a Go
// text/template executed over {"rollout": <the Rollout as JSON>}. Usage: notify TEMPLATE < rollout.json
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"text/template"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: notify TEMPLATE < rollout.json")
		os.Exit(2)
	}
	var rollout map[string]interface{}
	if err := json.NewDecoder(os.Stdin).Decode(&rollout); err != nil {
		fmt.Fprintln(os.Stderr, "rollout:", err)
		os.Exit(2)
	}
	tmpl, err := template.New("body").Option("missingkey=error").Parse(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "template:", err)
		os.Exit(2)
	}
	if err := tmpl.Execute(os.Stdout, map[string]interface{}{"rollout": rollout}); err != nil {
		fmt.Fprintln(os.Stderr, "render:", err)
		os.Exit(1)
	}
}
