//go:build tools

// Package tools pins the two programs this module builds, so go mod tidy keeps
// their dependencies: kube-apiserver from k8s.io/kubernetes and etcd from
// go.etcd.io/etcd/server/v3.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
)
