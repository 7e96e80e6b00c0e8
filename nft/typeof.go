package nft

import (
	"encoding/binary"

	"github.com/nftproxy/nftproxy/model"
)

// nft describes the key and data of a set declared with "typeof" as expressions in the set's
// user data, and prints the set from that description. These are nft's numbers for the
// expressions nftproxy's endpoint maps use (nft's src/expression.c, src/payload.c, src/meta.c,
// src/numgen.c); the kernel never looks at them.
const (
	udataTypeofExpr = 0 // NFTNL_UDATA_SET_TYPEOF_EXPR
	udataTypeofData = 1 // NFTNL_UDATA_SET_TYPEOF_DATA

	nftExprPayload = 7
	nftExprMeta    = 9
	nftExprConcat  = 13
	nftExprNumgen  = 23

	nftProtoDescIP   = 12 // PROTO_DESC_IP
	nftProtoDescIP6  = 13 // PROTO_DESC_IP6
	nftProtoDescTH   = 11 // PROTO_DESC_TH
	nftIPHdrSaddr    = 11 // IPHDR_SADDR
	nftIPHdrDaddr    = 12 // IPHDR_DADDR
	nftIP6HdrSaddr   = 8  // IP6HDR_SADDR
	nftIP6HdrDaddr   = 9  // IP6HDR_DADDR
	nftTHHdrDport    = 2  // THDR_DPORT
	nftMetaL4Proto   = 16 // NFT_META_L4PROTO
	nftNumgenRandom  = 1  // NFT_NG_RANDOM
	nftNumgenModulus = 1  // modulus printed in the set's typeof: "numgen random mod 1"
)

// udataTLV is nft's user-data encoding: a one-byte type, a one-byte length, the value.
func udataTLV(typ byte, value []byte) []byte {
	return append([]byte{typ, byte(len(value))}, value...)
}

func udataU32(typ byte, v uint32) []byte {
	return udataTLV(typ, binary.NativeEndian.AppendUint32(nil, v))
}

// typeofExpr describes one expression: its kind and its kind-specific attributes.
func typeofExpr(kind uint32, attrs ...[]byte) []byte {
	var data []byte
	for _, a := range attrs {
		data = append(data, a...)
	}
	return append(udataU32(udataTypeofExpr, kind), udataTLV(udataTypeofData, data)...)
}

func typeofPayload(desc, field uint32) []byte {
	return typeofExpr(nftExprPayload, udataU32(0, desc), udataU32(1, field))
}

func typeofDaddr(fam model.Family) []byte {
	if fam == model.IPv6 {
		return typeofPayload(nftProtoDescIP6, nftIP6HdrDaddr)
	}
	return typeofPayload(nftProtoDescIP, nftIPHdrDaddr)
}

func typeofSaddr(fam model.Family) []byte {
	if fam == model.IPv6 {
		return typeofPayload(nftProtoDescIP6, nftIP6HdrSaddr)
	}
	return typeofPayload(nftProtoDescIP, nftIPHdrSaddr)
}

// typeofConcat describes a concatenation of the given expressions.
func typeofConcat(fields ...[]byte) []byte {
	var data []byte
	for i, f := range fields {
		data = append(data, udataTLV(byte(i), f)...)
	}
	return append(udataU32(udataTypeofExpr, nftExprConcat), udataTLV(udataTypeofData, data)...)
}

// typeofUdata returns the typeof description of an endpoint map with the given key, whose
// data is "daddr . th dport".
func typeofUdata(fam model.Family, key []model.KeyField) []byte {
	fields := make([][]byte, 0, len(key))
	for _, k := range key {
		switch k {
		case model.KeyAddr:
			fields = append(fields, typeofDaddr(fam))
		case model.KeySaddr:
			fields = append(fields, typeofSaddr(fam))
		case model.KeyProto:
			fields = append(fields, typeofExpr(nftExprMeta, udataU32(0, nftMetaL4Proto)))
		case model.KeyPort:
			fields = append(fields, typeofPayload(nftProtoDescTH, nftTHHdrDport))
		case model.KeySlot:
			fields = append(fields, typeofExpr(nftExprNumgen,
				udataU32(0, nftNumgenRandom), udataU32(1, nftNumgenModulus), udataU32(2, 0)))
		}
	}
	out := udataTLV(udataSetKeyTypeof, typeofConcat(fields...))
	data := typeofConcat(typeofDaddr(fam), typeofPayload(nftProtoDescTH, nftTHHdrDport))
	return append(out, udataTLV(udataSetDataTypeof, data)...)
}
