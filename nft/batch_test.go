package nft

import (
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestBatchMessages checks how messages are laid out in a batch's buffers: each one whole,
// in order, across buffers when a large batch needs several, and that a batch holding a
// message its encoder left unfinished is refused rather than sent.
func TestBatchMessages(t *testing.T) {
	b := &batch{}
	const tables = 40000 // about 1.3 MB of messages: more than one buffer
	for i := range tables {
		b.addTable(unix.NFPROTO_IPV4, strings.Repeat("t", i%7+1))
	}
	if len(b.chunks) == 0 {
		t.Fatalf("%d messages of %d bytes in one buffer", b.n, len(b.buf))
	}
	i := 0
	b.eachMessage(func(typ uint16, data []byte) {
		name, err := attrString(data, unix.NFTA_TABLE_NAME)
		if typ != unix.NFT_MSG_NEWTABLE || err != nil || name != strings.Repeat("t", i%7+1) {
			t.Fatalf("message %d: type %d, table %q (%v)", i, typ, name, err)
		}
		i++
	})
	if i != tables || b.n != tables {
		t.Errorf("read back %d messages, counted %d, want %d", i, b.n, tables)
	}

	b.begin(unix.NFPROTO_IPV4, unix.NFT_MSG_NEWSETELEM, 0) // never ended
	if err := b.commit(nil, 0); err == nil || !strings.Contains(err.Error(), "unfinished") {
		t.Errorf("commit of a batch with an unfinished message: %v", err)
	}
}
