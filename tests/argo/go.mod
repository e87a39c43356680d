module vigil/tests/argo

go 1.18

require github.com/expr-lang/expr v1.17.0
