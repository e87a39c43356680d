// Evaluates an Argo Rollouts metric's successCondition / failureCondition over measured values, with the
// expression library Argo uses (expr-lang/expr) and Argo's decision table (utils/evaluate): failure wins,
// then success, else Inconclusive; a compile or run error is Error.
//
// Input (stdin): {"success": "...", "failure": "...", "results": ["pass", ...]}; output: one phase per line.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"

	"github.com/expr-lang/expr"
)

type input struct {
	Success string   `json:"success"`
	Failure string   `json:"failure"`
	Results []string `json:"results"`
}

func eval(result string, condition string) (bool, error) {
	env := map[string]interface{}{
		"result": result,
		"asInt": func(in string) int64 {
			v, err := strconv.ParseInt(in, 10, 64)
			if err != nil {
				panic(err)
			}
			return v
		},
		"asFloat": func(in string) float64 {
			v, err := strconv.ParseFloat(in, 64)
			if err != nil {
				panic(err)
			}
			return v
		},
	}
	program, err := expr.Compile(condition, expr.Env(env), expr.AsBool())
	if err != nil {
		return false, err
	}
	out, err := expr.Run(program, env)
	if err != nil {
		return false, err
	}
	return out.(bool), nil
}

func phase(in input, result string) string {
	success, failure := false, false
	var err error
	if in.Success != "" {
		if success, err = eval(result, in.Success); err != nil {
			return "Error"
		}
	}
	if in.Failure != "" {
		if failure, err = eval(result, in.Failure); err != nil {
			return "Error"
		}
	}
	switch {
	case in.Success == "" && in.Failure == "":
		return "Successful"
	case in.Success != "" && in.Failure == "":
		failure = !success
	case in.Success == "" && in.Failure != "":
		success = !failure
	}
	if failure {
		return "Failed"
	}
	if !success {
		return "Inconclusive"
	}
	return "Successful"
}

func main() {
	var in input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	for _, r := range in.Results {
		fmt.Println(phase(in, r))
	}
}
