package nft

import "errors"

// The errors nftproxy's callers test for with errors.Is: the operations that fail with them
// wrap them with what failed.
var (
	// ErrIncompatible reports that nftproxy's table exists but was not written in the layout
	// the desired ruleset describes (a set or map missing, extra or declared differently, a
	// base chain hooked differently, a chain nftproxy would not create, an element nftproxy
	// would not write): it cannot be updated in place and must be replaced as a whole.
	ErrIncompatible = errors.New("nftables table is not in nftproxy's layout")

	// ErrGenerationChanged reports that the ruleset changed between reading its generation
	// and committing a batch that was conditional on it, and nothing was applied; or, from
	// Read and ReadTable, that it changed during every attempt to read the table at one
	// generation.
	ErrGenerationChanged = errors.New("nftables ruleset generation changed")

	// ErrInjected is the error a Fake returns for a transaction it was told to fail.
	ErrInjected = errors.New("injected nftables failure")
)

// errMalformed reports netlink attributes whose lengths do not add up. It stays unexported:
// no caller acts on it differently from any other failed read.
var errMalformed = errors.New("malformed netlink attributes")
