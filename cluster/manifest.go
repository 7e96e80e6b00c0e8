package cluster

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/nftproxy/nftproxy/internal/kubeclient"
	"github.com/nftproxy/nftproxy/internal/logkey"
)

// DefaultManifestInterval is how often a ManifestSource polls its directory by default.
const DefaultManifestInterval = 500 * time.Millisecond

// maxListDepth bounds how deeply Lists nested in Lists are expanded.
const maxListDepth = 4

// manifestFile is one manifest file as read from disk.
type manifestFile struct {
	name  string
	size  int64
	mtime time.Time
	data  []byte
	err   error // set when the file could not be read
}

// isManifestName reports whether a file name has a manifest extension.
func isManifestName(name string) bool {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".yaml", ".yml", ".json":
		return true
	}
	return false
}

// readManifestDir reads every manifest file in dir, sorted by name. It fails only when dir
// itself cannot be listed; a file that cannot be read is returned with err set.
func readManifestDir(dir string) ([]manifestFile, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read manifest directory: %w", err)
	}
	var files []manifestFile
	for _, e := range entries { // os.ReadDir sorts by name
		if !isManifestName(e.Name()) {
			continue
		}
		path := filepath.Join(dir, e.Name())
		fi, err := os.Stat(path) // follows symlinks
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed since listing
		}
		f := manifestFile{name: e.Name()}
		if err != nil {
			f.err = err
			files = append(files, f)
			continue
		}
		if !fi.Mode().IsRegular() {
			continue
		}
		f.size, f.mtime = fi.Size(), fi.ModTime()
		f.data, f.err = os.ReadFile(path)
		if errors.Is(f.err, fs.ErrNotExist) {
			continue
		}
		files = append(files, f)
	}
	return files, nil
}

// hashManifests fingerprints file names, sizes, mtimes and contents.
func hashManifests(files []manifestFile) [sha256.Size]byte {
	h := sha256.New()
	var buf [8]byte
	for _, f := range files {
		binary.BigEndian.PutUint64(buf[:], uint64(len(f.name)))
		h.Write(buf[:])
		h.Write([]byte(f.name))
		binary.BigEndian.PutUint64(buf[:], uint64(f.size))
		h.Write(buf[:])
		binary.BigEndian.PutUint64(buf[:], uint64(f.mtime.UnixNano()))
		h.Write(buf[:])
		if f.err != nil {
			h.Write([]byte{1})
			h.Write([]byte(f.err.Error()))
		} else {
			h.Write([]byte{0})
		}
		binary.BigEndian.PutUint64(buf[:], uint64(len(f.data)))
		h.Write(buf[:])
		h.Write(f.data)
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum
}

// LoadManifests reads every *.yaml, *.yml and *.json file in dir (not recursive, sorted by
// name), splits multi-document YAML ("---"), expands `kind: List` items, decodes each document
// with client-go's scheme and keeps Services, EndpointSlices (discovery.k8s.io/v1) and Nodes. A
// document that fails to decode, or of another kind, is skipped and returned as a BadObject
// naming file:document index and kind/name where known. Returns an error only when dir cannot
// be read.
func LoadManifests(dir string) (Objects, []BadObject, error) {
	files, err := readManifestDir(dir)
	if err != nil {
		return Objects{}, nil, err
	}
	objs, bad := parseManifests(files)
	return objs, bad, nil
}

// DecodeManifest decodes the manifest documents in data, read from the file called name (used
// only to name bad documents), as LoadManifests decodes each file of a directory. What cannot
// be decoded is in the snapshot's Bad list.
func DecodeManifest(name string, data []byte) Objects {
	objs, bad := parseManifests([]manifestFile{{name: name, data: data}})
	objs.Bad = bad
	return objs
}

// parseManifests decodes the objects of files.
func parseManifests(files []manifestFile) (Objects, []BadObject) {
	var objs Objects
	var bad []BadObject
	for _, f := range files {
		if f.err != nil {
			bad = append(bad, BadObject{Kind: KindFile, Name: f.name, Err: f.err})
			continue
		}
		r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(f.data)))
		for doc := 1; ; doc++ {
			data, err := r.Read()
			if err == io.EOF {
				break
			}
			where := fmt.Sprintf("%s:%d", f.name, doc)
			if err != nil {
				bad = append(bad, BadObject{Kind: KindDocument, Err: fmt.Errorf("%s: split documents: %w", where, err)})
				break
			}
			decodeDocument(data, where, 0, &objs, &bad)
		}
	}
	return objs, bad
}

// docHeader is the part of any object needed to name it and expand Lists.
type docHeader struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"metadata"`
}

// listItems is the items field of a List.
type listItems struct {
	Items []runtime.RawExtension `json:"items"`
}

// decodeDocument decodes one YAML or JSON document into objs, expanding Lists.
func decodeDocument(data []byte, where string, depth int, objs *Objects, bad *[]BadObject) {
	badDoc := func(h docHeader, err error) {
		kind := h.Kind
		if kind == "" {
			kind = KindDocument
		}
		*bad = append(*bad, BadObject{Kind: kind, Namespace: h.Metadata.Namespace, Name: h.Metadata.Name,
			Err: fmt.Errorf("%s: %w", where, err)})
	}
	var h docHeader
	jsonData := bytes.TrimSpace(data)
	if len(jsonData) == 0 || jsonData[0] != '{' || !json.Valid(jsonData) {
		// YAML, or JSON that YAML can read; JSON is taken as is since YAML refuses tabs.
		var err error
		if jsonData, err = yaml.YAMLToJSON(data); err != nil {
			badDoc(h, fmt.Errorf("parse: %w", err))
			return
		}
		jsonData = bytes.TrimSpace(jsonData)
	}
	if len(jsonData) == 0 || bytes.Equal(jsonData, []byte("null")) {
		return // empty document or only comments
	}
	// Field names are matched case-sensitively, as the API server and the deserializer below
	// match them: encoding/json would take "nAme" for the name the object does not have.
	if err := kjson.UnmarshalCaseSensitivePreserveInts(jsonData, &h); err != nil {
		badDoc(h, fmt.Errorf("parse: %w", err))
		return
	}
	if h.Kind == "List" || isListOfKnown(h.Kind) {
		if depth >= maxListDepth {
			badDoc(h, errors.New("lists nested too deeply"))
			return
		}
		var l listItems
		if err := kjson.UnmarshalCaseSensitivePreserveInts(jsonData, &l); err != nil {
			badDoc(h, fmt.Errorf("parse items: %w", err))
			return
		}
		for i, item := range l.Items {
			decodeDocument(item.Raw, fmt.Sprintf("%s items[%d]", where, i), depth+1, objs, bad)
		}
		return
	}
	obj, _, err := kubeclient.Codecs.UniversalDeserializer().Decode(jsonData, nil, nil)
	if runtime.IsNotRegisteredError(err) {
		badDoc(h, fmt.Errorf("unsupported kind %s %s", h.APIVersion, h.Kind))
		return
	}
	if err != nil {
		badDoc(h, fmt.Errorf("decode: %w", err))
		return
	}
	if m, ok := obj.(metav1.Object); ok && m.GetName() == "" {
		// The API server names every object; a manifest without one could be reported
		// only by the place it stands in.
		badDoc(h, errors.New("metadata.name is empty"))
		return
	}
	switch o := obj.(type) {
	case *corev1.Service:
		objs.Services = append(objs.Services, o)
	case *discoveryv1.EndpointSlice:
		objs.EndpointSlices = append(objs.EndpointSlices, o)
	case *corev1.Node:
		objs.Nodes = append(objs.Nodes, o)
	default:
		badDoc(h, fmt.Errorf("unsupported kind %s %s", h.APIVersion, h.Kind))
	}
}

// isListOfKnown reports whether kind is the typed list of a kind LoadManifests keeps, as
// `kubectl get services -o yaml` may print.
func isListOfKnown(kind string) bool {
	return slices.Contains([]string{"ServiceList", "EndpointSliceList", "NodeList"}, kind)
}

// ManifestSource watches a directory and delivers a fresh Snapshot whenever its content
// changes, with the Services that differ from the previous reading's. It stands in for the API server in tests and on machines without a cluster.
type ManifestSource struct {
	// Dir is the directory holding the manifests.
	Dir string
	// Interval is the poll interval; zero means DefaultManifestInterval.
	Interval time.Duration
	// Log receives warnings; nil means slog.Default().
	Log *slog.Logger
}

// Run calls onChange with a Full Delta of the first reading at once and then, after each
// change (detected by polling a hash of file names, sizes, mtimes and contents, and delivered
// once the new content has been stable for one poll), a Delta naming the Services whose
// objects differ from the previous reading's, until ctx is done; then it returns nil.
// Documents that cannot be read travel in the Delta's Bad list. An unreadable directory is
// logged and retried, and nothing is delivered until it can be read.
func (s *ManifestSource) Run(ctx context.Context, onChange func(Delta)) error {
	if s.Dir == "" {
		return errors.New("manifest source: no directory")
	}
	if onChange == nil {
		return errors.New("manifest source: nil onChange")
	}
	interval := s.Interval
	if interval <= 0 {
		interval = DefaultManifestInterval
	}
	log := s.Log
	if log == nil {
		log = slog.Default()
	}
	log = log.With(logkey.Dir, s.Dir)

	var (
		delivered   bool
		lastHash    [sha256.Size]byte
		pending     bool
		pendingHash [sha256.Size]byte
		lastErr     string
		last        *Snapshot
	)
	poll := func() {
		files, err := readManifestDir(s.Dir)
		if err != nil {
			if err.Error() != lastErr {
				log.Warn("cannot read manifests, will retry", logkey.Error, err)
				lastErr = err.Error()
			}
			return
		}
		if lastErr != "" {
			log.Info("manifest directory readable again")
			lastErr = ""
		}
		sum := hashManifests(files)
		if delivered {
			if sum == lastHash {
				pending = false
				return
			}
			// Deliver a change only once it has held for one interval, so that a file
			// caught half-written does not briefly withdraw rules.
			if !pending || sum != pendingHash {
				pending, pendingHash = true, sum
				return
			}
		}
		pending = false
		objs, bad := parseManifests(files)
		objs.Bad = bad
		snap := NewSnapshot(objs)
		var d Delta
		if last == nil {
			d = Delta{Store: snap, Full: true, Bad: snap.Bad(),
				Events: Events{Services: len(objs.Services), EndpointSlices: len(objs.EndpointSlices)}}
		} else {
			d = snap.Diff(last)
		}
		last = snap
		log.Debug("manifests changed", logkey.Count, len(objs.Services)+len(objs.EndpointSlices)+len(objs.Nodes))
		delivered, lastHash = true, sum
		onChange(d)
	}

	poll()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			poll()
		}
	}
}

// countChanged counts the objects added, changed or removed from before to now, by
// namespace and name.
func countChanged[T interface {
	comparable
	metav1.Object
}](before, now []T) int {
	key := func(o T) string { return o.GetNamespace() + "/" + o.GetName() }
	old := make(map[string]T, len(before))
	for _, o := range before {
		old[key(o)] = o
	}
	n := 0
	for _, o := range now {
		k := key(o)
		if prev, ok := old[k]; !ok || !reflect.DeepEqual(prev, o) {
			n++
		}
		delete(old, k)
	}
	return n + len(old)
}
