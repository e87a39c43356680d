module vigil/tests/argo

go 1.26.8

require github.com/expr-lang/expr v1.17.0
