package cluster

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/nftproxy/nftproxy/internal/kubeclient"
)

// The informers of Services and EndpointSlices fill their caches with a LIST whose response is
// decoded as it arrives, one object at a time, each trimmed (trimObject) before the next is
// read. client-go's own LIST reads the whole body into one growing buffer, decodes every
// object whole (managed fields, annotations, every label), and only then lets the informer
// trim them: at 10,000 Services x 10 endpoints, bodies of 4.8 MB (Services) and 6.4 MB
// (EndpointSlices) copied at every doubling, and every object whole alive at once, most of it
// garbage a moment later. Streamed, the peak holds one object beyond the trimmed ones, and the
// decoding overlaps the transfer.
//
// A protobuf body (what nftproxy asks for by default) is a runtime.Unknown envelope after
// the serializer's magic, whose raw field is the List message: metadata (field 1) and the
// items (field 2, repeated), each decoded by the API type's generated Unmarshal. A JSON body
// (--kube-api-content-type=application/json) is decoded whole, as client-go would.

// maxListItem bounds one object of a streamed list; the API server stores none larger than a
// few megabytes.
const maxListItem = 64 << 20

// protobufMagic starts every body of the Kubernetes protobuf serializer.
var protobufMagic = []byte{0x6b, 0x38, 0x73, 0x00}

// resource is what an informer of one kind of object needs.
type resource struct {
	typ   runtime.Object // an empty object of the kind
	list  func(context.Context, metav1.ListOptions) (runtime.Object, error)
	watch func(context.Context, metav1.ListOptions) (watch.Interface, error)
}

// servicesResource is every namespace's Services, listed by streamList.
func servicesResource(core rest.Interface) resource {
	return resource{typ: &corev1.Service{}, list: streamLister(core, "services", func() listInto { return &serviceList{} }),
		watch: restWatch(core, "services", "")}
}

// slicesResource is every namespace's EndpointSlices, listed by streamList.
func slicesResource(discovery rest.Interface) resource {
	return resource{typ: &discoveryv1.EndpointSlice{}, list: streamLister(discovery, "endpointslices", func() listInto { return &sliceList{} }),
		watch: restWatch(discovery, "endpointslices", "")}
}

// nodeResource is the Node named name (a field selector: the API server sends no other).
func nodeResource(core rest.Interface, name string) resource {
	sel := fields.OneTermEqualSelector("metadata.name", name).String()
	return resource{typ: &corev1.Node{},
		list: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = sel
			out := &corev1.NodeList{}
			err := core.Get().Resource("nodes").VersionedParams(&o, kubeclient.ParameterCodec).Do(ctx).Into(out)
			return out, err
		},
		watch: restWatch(core, "nodes", sel)}
}

// streamLister lists resource through rc with streamList, into a fresh list of into's.
func streamLister(rc rest.Interface, resource string, into func() listInto) func(context.Context, metav1.ListOptions) (runtime.Object, error) {
	return func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
		return streamList(ctx, rc, resource, o, into())
	}
}

// restWatch watches resource (cluster-wide) through rc, as client-go's typed clients do;
// selector, when set, is the field selector.
func restWatch(rc rest.Interface, resource, selector string) func(context.Context, metav1.ListOptions) (watch.Interface, error) {
	return func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
		var timeout time.Duration
		if o.TimeoutSeconds != nil {
			timeout = time.Duration(*o.TimeoutSeconds) * time.Second
		}
		if selector != "" {
			o.FieldSelector = selector
		}
		o.Watch = true
		return rc.Get().Resource(resource).VersionedParams(&o, kubeclient.ParameterCodec).Timeout(timeout).Watch(ctx)
	}
}

// informer returns a shared informer of res, whose objects are trimmed (trimObject) as they
// enter its cache; client, when not nil, is the client whose WatchList semantics the
// informer follows (a fake client set's, in tests).
func (res resource) informer(client any, resync time.Duration) (cache.SharedIndexInformer, error) {
	lw := &cache.ListWatch{ListWithContextFunc: res.list, WatchFuncWithContext: res.watch}
	inf := cache.NewSharedIndexInformerWithOptions(cache.ToListWatcherWithWatchListSemantics(lw, client), res.typ,
		cache.SharedIndexInformerOptions{ResyncPeriod: resync, Indexers: cache.Indexers{}})
	if err := inf.SetTransform(trimObject); err != nil {
		return nil, fmt.Errorf("set transform: %w", err)
	}
	return inf, nil
}

// listInto receives a streamed list: its runtime.Object, the metadata, each item's bytes.
type listInto interface {
	object() runtime.Object
	setMeta(metav1.ListMeta)
	add(item []byte) error
	// decodeWhole decodes a list's whole body (JSON), each item trimmed.
	decodeWhole(data []byte) error
}

// objectList is a list of pointers to its items. client-go's reflector hands the items of a
// list it LISTed to the informer's store as they are when they are runtime.Objects, as
// pointers are; the items of a list of values (corev1.ServiceList) it first copies each into
// an allocation of its own (meta.ExtractListWithAlloc), and a streamed list of values needed
// them gathered into one array before that: at 10,000 Services x 10 endpoints, 20 MB of
// Services and EndpointSlices copied twice, garbage at once. Here each item is allocated
// once, as it is decoded, and is what the cache keeps.
type objectList[T any, P interface {
	*T
	runtime.Object
}] struct {
	metav1.TypeMeta
	metav1.ListMeta
	Items []P
}

// DeepCopyObject implements runtime.Object.
func (l *objectList[T, P]) DeepCopyObject() runtime.Object {
	out := &objectList[T, P]{TypeMeta: l.TypeMeta, ListMeta: *l.ListMeta.DeepCopy()}
	if l.Items != nil {
		out.Items = make([]P, len(l.Items))
		for i, it := range l.Items {
			out.Items[i] = it.DeepCopyObject().(P)
		}
	}
	return out
}

// serviceList receives a ServiceList, each Service trimmed as it is decoded.
type serviceList struct {
	objectList[corev1.Service, *corev1.Service]
	scratch []byte
}

func (l *serviceList) object() runtime.Object    { return &l.objectList }
func (l *serviceList) setMeta(m metav1.ListMeta) { l.ListMeta = m }
func (l *serviceList) add(b []byte) error {
	svc := &corev1.Service{}
	b, l.scratch = stripped(l.scratch, b, serviceStrip)
	if err := svc.Unmarshal(b); err != nil {
		return err
	}
	trimObject(svc)
	l.Items = append(l.Items, svc)
	return nil
}
func (l *serviceList) decodeWhole(data []byte) error {
	var whole corev1.ServiceList
	if err := runtime.DecodeInto(kubeclient.Codecs.UniversalDeserializer(), data, &whole); err != nil {
		return err
	}
	l.TypeMeta, l.ListMeta = whole.TypeMeta, whole.ListMeta
	l.Items = make([]*corev1.Service, 0, len(whole.Items))
	// Each Service a copy of its own (trimmed, 640 bytes), not a pointer into the array of
	// the decoded list, which would stay whole as long as any of them is cached.
	for _, svc := range whole.Items {
		trimObject(&svc)
		l.Items = append(l.Items, &svc)
	}
	return nil
}

// sliceList receives an EndpointSliceList, each slice compacted as it is decoded.
type sliceList struct {
	objectList[discoveryv1.EndpointSlice, *discoveryv1.EndpointSlice]
	scratch []byte
}

func (l *sliceList) object() runtime.Object    { return &l.objectList }
func (l *sliceList) setMeta(m metav1.ListMeta) { l.ListMeta = m }
func (l *sliceList) add(b []byte) error {
	var es discoveryv1.EndpointSlice
	b, l.scratch = stripped(l.scratch, b, sliceStrip)
	// The decoder appends to what is there: endpoints of their exact number are decoded in
	// place, and compactSlice keeps their array.
	if n := occurrences(b, 2); n > 0 {
		es.Endpoints = make([]discoveryv1.Endpoint, 0, n)
	}
	if err := es.Unmarshal(b); err != nil {
		return err
	}
	l.Items = append(l.Items, compactSlice(&es))
	return nil
}
func (l *sliceList) decodeWhole(data []byte) error {
	var whole discoveryv1.EndpointSliceList
	if err := runtime.DecodeInto(kubeclient.Codecs.UniversalDeserializer(), data, &whole); err != nil {
		return err
	}
	l.TypeMeta, l.ListMeta = whole.TypeMeta, whole.ListMeta
	l.Items = make([]*discoveryv1.EndpointSlice, len(whole.Items))
	// compactSlice copies each into a slice of its own.
	for i := range whole.Items {
		l.Items[i] = compactSlice(&whole.Items[i])
	}
	return nil
}

// strip names the fields of a protobuf message that a streamed item loses before it is
// decoded: a field mapped to nil is dropped, one mapped to a strip is stripped in turn (each
// occurrence of a repeated one), the others are kept. What goes is what trimObject drops
// anyway (managed fields: per manager a name, a time and a JSON document; a Pod reference
// per endpoint): decoding it only to drop it is allocation and GC work for nothing. Field
// numbers are those of the API types' generated.proto.
type strip map[protowire.Number]strip

// metaStrip drops from an ObjectMeta its owner references (13), finalizers (14) and managed
// fields (17); serviceMetaStrip also its annotations (12), which a Service's trimming drops
// whole (an EndpointSlice keeps one).
var (
	metaStrip        = strip{13: nil, 14: nil, 17: nil}
	serviceMetaStrip = strip{12: nil, 13: nil, 14: nil, 17: nil}
	// serviceStrip: a Service's metadata (1) and its spec's (2) selector (2).
	serviceStrip = strip{1: serviceMetaStrip, 2: strip{2: nil}}
	// sliceStrip: an EndpointSlice's metadata (1), and in each endpoint (2) its hostname (3),
	// target reference (4) and deprecated topology (5).
	sliceStrip = strip{1: metaStrip, 2: strip{3: nil, 4: nil, 5: nil}}
)

// stripped returns msg without the fields s drops, written into scratch (returned for
// reuse). A message that does not parse is returned as it is, for its decoder to report.
func stripped(scratch, msg []byte, s strip) (out, buf []byte) {
	n, ok := strippedSize(msg, s)
	if !ok {
		return msg, scratch
	}
	buf = appendStripped(slices.Grow(scratch[:0], n), msg, s)
	return buf, buf
}

// strippedSize returns the size of msg without the fields s drops; false if msg does not
// parse.
func strippedSize(msg []byte, s strip) (int, bool) {
	size := 0
	for len(msg) > 0 {
		num, typ, n := protowire.ConsumeTag(msg)
		if n < 0 {
			return 0, false
		}
		m := protowire.ConsumeFieldValue(num, typ, msg[n:])
		if m < 0 {
			return 0, false
		}
		sub, listed := s[num]
		switch {
		case !listed:
			size += n + m
		case sub != nil && typ == protowire.BytesType:
			v, _ := protowire.ConsumeBytes(msg[n:])
			vs, ok := strippedSize(v, sub)
			if !ok {
				return 0, false
			}
			size += n + protowire.SizeBytes(vs)
		case sub != nil:
			size += n + m // not a message: kept
		}
		msg = msg[n+m:]
	}
	return size, true
}

// occurrences counts the fields numbered num in msg (0 if it does not parse).
func occurrences(msg []byte, num protowire.Number) int {
	count := 0
	for len(msg) > 0 {
		n, typ, tn := protowire.ConsumeTag(msg)
		if tn < 0 {
			return 0
		}
		m := protowire.ConsumeFieldValue(n, typ, msg[tn:])
		if m < 0 {
			return 0
		}
		if n == num {
			count++
		}
		msg = msg[tn+m:]
	}
	return count
}

// appendStripped appends msg without the fields s drops to dst; msg parses (strippedSize).
func appendStripped(dst, msg []byte, s strip) []byte {
	for len(msg) > 0 {
		num, typ, n := protowire.ConsumeTag(msg)
		m := protowire.ConsumeFieldValue(num, typ, msg[n:])
		sub, listed := s[num]
		switch {
		case !listed || (sub != nil && typ != protowire.BytesType):
			dst = append(dst, msg[:n+m]...)
		case sub != nil:
			v, _ := protowire.ConsumeBytes(msg[n:])
			vs, _ := strippedSize(v, sub)
			dst = protowire.AppendTag(dst, num, typ)
			dst = protowire.AppendVarint(dst, uint64(vs))
			dst = appendStripped(dst, v, sub)
		}
		msg = msg[n+m:]
	}
	return dst
}

// streamList lists resource (cluster-wide) through rc with opts and decodes the response into
// into as it is read. The request is client-go's (its throttling, retries, authentication
// and Accept header); a response that is not 2xx is the error client-go would give (an API
// status: a 410 Gone has the informer list again).
func streamList(ctx context.Context, rc rest.Interface, resource string, opts metav1.ListOptions, into listInto) (runtime.Object, error) {
	body, err := rc.Get().Resource(resource).VersionedParams(&opts, kubeclient.ParameterCodec).Stream(ctx)
	if err != nil {
		return nil, err
	}
	defer body.Close()
	r := bufio.NewReaderSize(body, 64<<10)
	head, err := r.Peek(len(protobufMagic))
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("list %s: read response: %w", resource, err)
	}
	if !bytes.Equal(head, protobufMagic) {
		data, err := io.ReadAll(r)
		if err != nil {
			return nil, fmt.Errorf("list %s: read response: %w", resource, err)
		}
		if err := into.decodeWhole(data); err != nil {
			return nil, fmt.Errorf("list %s: decode response: %w", resource, err)
		}
		return into.object(), nil
	}
	if _, err := r.Discard(len(protobufMagic)); err != nil {
		return nil, fmt.Errorf("list %s: read response: %w", resource, err)
	}
	if err := decodeProtobufList(r, into); err != nil {
		return nil, fmt.Errorf("list %s: %w", resource, err)
	}
	return into.object(), nil
}

// decodeProtobufList decodes a runtime.Unknown envelope (after the magic) holding a List.
func decodeProtobufList(br *bufio.Reader, into listInto) error {
	r := &pbReader{r: br, left: -1}
	var typ runtime.TypeMeta
	var buf []byte
	sawList := false
	for {
		field, wire, err := r.tag()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		switch {
		case field == 1 && wire == wireBytes: // typeMeta
			if buf, err = r.bytes(buf); err != nil {
				return fmt.Errorf("read type: %w", err)
			}
			if err := typ.Unmarshal(buf); err != nil {
				return fmt.Errorf("decode type: %w", err)
			}
		case field == 2 && wire == wireBytes && typ.Kind == "Status":
			if buf, err = r.bytes(buf); err != nil {
				return fmt.Errorf("read status: %w", err)
			}
			var st metav1.Status
			if err := st.Unmarshal(buf); err != nil {
				return fmt.Errorf("decode status: %w", err)
			}
			return apierrors.FromObject(&st)
		case field == 2 && wire == wireBytes: // raw: the List
			n, err := binary.ReadUvarint(r)
			if err != nil {
				return fmt.Errorf("read list: %w", noEOF(err))
			}
			if err := decodeListFields(&pbReader{r: br, left: int64(n)}, into); err != nil {
				return err
			}
			sawList = true
		case field == 3 && wire == wireBytes: // contentEncoding
			if buf, err = r.bytes(buf); err != nil {
				return err
			}
			if len(buf) > 0 {
				return fmt.Errorf("content encoding %q: not supported", buf)
			}
		default:
			if err := r.skip(wire); err != nil {
				return err
			}
		}
	}
	if !sawList {
		return fmt.Errorf("no list in the response (kind %q)", typ.Kind)
	}
	return nil
}

// decodeListFields decodes the fields of a List message: its metadata and its items, handed
// to into one at a time.
func decodeListFields(r *pbReader, into listInto) error {
	var buf []byte
	for {
		field, wire, err := r.tag()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		switch {
		case field == 1 && wire == wireBytes:
			if buf, err = r.bytes(buf); err != nil {
				return fmt.Errorf("read list metadata: %w", err)
			}
			var m metav1.ListMeta
			if err := m.Unmarshal(buf); err != nil {
				return fmt.Errorf("decode list metadata: %w", err)
			}
			into.setMeta(m)
		case field == 2 && wire == wireBytes:
			if buf, err = r.bytes(buf); err != nil {
				return fmt.Errorf("read item: %w", err)
			}
			if err := into.add(buf); err != nil {
				return fmt.Errorf("decode item: %w", err)
			}
		default:
			if err := r.skip(wire); err != nil {
				return err
			}
		}
	}
}

// Protobuf wire types.
const (
	wireVarint  = 0
	wireFixed64 = 1
	wireBytes   = 2
	wireFixed32 = 5
)

// pbReader reads one protobuf message from r: left bytes of it, or (left < 0) up to the end
// of r.
type pbReader struct {
	r    *bufio.Reader
	left int64
}

// ReadByte reads a byte of the message, io.EOF at its end.
func (p *pbReader) ReadByte() (byte, error) {
	if p.left == 0 {
		return 0, io.EOF
	}
	b, err := p.r.ReadByte()
	if err == nil && p.left > 0 {
		p.left--
	}
	return b, err
}

// Read reads bytes of the message, io.EOF at its end.
func (p *pbReader) Read(b []byte) (int, error) {
	if p.left == 0 {
		return 0, io.EOF
	}
	if p.left > 0 && int64(len(b)) > p.left {
		b = b[:p.left]
	}
	n, err := p.r.Read(b)
	if p.left > 0 {
		p.left -= int64(n)
	}
	return n, err
}

// tag reads a field's tag; io.EOF means there is none: the message ended.
func (p *pbReader) tag() (field uint64, wire int, err error) {
	if p.left < 0 {
		if _, err := p.r.Peek(1); err != nil {
			return 0, 0, err
		}
	} else if p.left == 0 {
		return 0, 0, io.EOF
	}
	v, err := binary.ReadUvarint(p)
	if err != nil {
		return 0, 0, fmt.Errorf("read field tag: %w", noEOF(err))
	}
	return v >> 3, int(v & 7), nil
}

// length reads a length-delimited field's length.
func (p *pbReader) length() (uint64, error) {
	n, err := binary.ReadUvarint(p)
	if err != nil {
		return 0, noEOF(err)
	}
	if p.left >= 0 && n > uint64(p.left) {
		return 0, fmt.Errorf("field of %d bytes in %d: %w", n, p.left, io.ErrUnexpectedEOF)
	}
	if n > math.MaxInt64 {
		return 0, fmt.Errorf("field of %d bytes: longer than any body", n)
	}
	return n, nil
}

// bytes reads a length-delimited field's value into buf, which it grows as needed.
func (p *pbReader) bytes(buf []byte) ([]byte, error) {
	n, err := p.length()
	if err != nil {
		return buf, err
	}
	if n > maxListItem {
		return buf, fmt.Errorf("field of %d bytes: more than %d", n, maxListItem)
	}
	if uint64(cap(buf)) < n {
		buf = make([]byte, n, max(n, 2*uint64(cap(buf))))
	}
	buf = buf[:n]
	if _, err := io.ReadFull(p, buf); err != nil {
		return buf, noEOF(err)
	}
	return buf, nil
}

// skip reads past a field's value of wire type wire.
func (p *pbReader) skip(wire int) error {
	var n uint64
	switch wire {
	case wireVarint:
		_, err := binary.ReadUvarint(p)
		return noEOF(err)
	case wireFixed64:
		n = 8
	case wireFixed32:
		n = 4
	case wireBytes:
		var err error
		if n, err = p.length(); err != nil {
			return err
		}
	default:
		return fmt.Errorf("protobuf wire type %d: not supported", wire)
	}
	if _, err := io.CopyN(io.Discard, p, int64(n)); err != nil {
		return noEOF(err)
	}
	return nil
}

// noEOF turns an end of input inside a field into io.ErrUnexpectedEOF.
func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
