// Package model owns the translation from cluster state to the desired nftables ruleset.
//
// It is a pure function: Build takes the Services this node must proxy (already converted from
// Kubernetes objects by package sync) and the node's configuration, and returns a Ruleset value
// for one IP family. It performs no I/O, keeps no clock and produces sorted, deterministic
// output, so the same input always yields byte-identical rules. Render turns a Ruleset into the
// text `nft list table` prints; package nft turns the same value into netlink messages.
package model
