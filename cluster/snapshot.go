package cluster

import (
	"errors"
	"reflect"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/nftproxy/nftproxy/model"
)

// Snapshot is a Store over a fixed set of objects, indexed once: what ManifestSource delivers
// after each reading of its directory, and what Convert reads.
type Snapshot struct {
	objs     Objects
	services map[model.ServiceName]*corev1.Service
	slices   map[model.ServiceName][]*discoveryv1.EndpointSlice
	bad      []BadObject
}

var _ Store = (*Snapshot)(nil)

// NewSnapshot indexes objs. Of two Services with the same namespace and name the first is
// kept and the second reported in Bad; nil objects are left out.
func NewSnapshot(objs Objects) *Snapshot {
	s := &Snapshot{
		objs:     objs,
		services: make(map[model.ServiceName]*corev1.Service, len(objs.Services)),
		slices:   make(map[model.ServiceName][]*discoveryv1.EndpointSlice, len(objs.EndpointSlices)),
		bad:      objs.Bad[:len(objs.Bad):len(objs.Bad)],
	}
	for _, svc := range objs.Services {
		if svc == nil {
			continue
		}
		name := model.ServiceName{Namespace: svc.Namespace, Name: svc.Name}
		if s.services[name] != nil {
			s.bad = append(s.bad, BadObject{Kind: KindService, Namespace: svc.Namespace, Name: svc.Name,
				Err: errors.New("duplicate Service in snapshot, keeping the first")})
			continue
		}
		s.services[name] = svc
	}
	for _, es := range objs.EndpointSlices {
		if name, ok := sliceService(es); ok {
			s.slices[name] = append(s.slices[name], es)
		}
	}
	return s
}

// sliceService returns the name of the Service an EndpointSlice belongs to (its
// kubernetes.io/service-name label); false for a nil slice or one without the label.
func sliceService(es *discoveryv1.EndpointSlice) (model.ServiceName, bool) {
	if es == nil {
		return model.ServiceName{}, false
	}
	svc := es.Labels[discoveryv1.LabelServiceName]
	if svc == "" {
		return model.ServiceName{}, false
	}
	return model.ServiceName{Namespace: es.Namespace, Name: svc}, true
}

// Service returns the Service named name, nil when there is none.
func (s *Snapshot) Service(name model.ServiceName) *corev1.Service { return s.services[name] }

// EndpointSlices returns the EndpointSlices of name's Service, in the snapshot's order.
func (s *Snapshot) EndpointSlices(name model.ServiceName) []*discoveryv1.EndpointSlice {
	return s.slices[name]
}

// Nodes returns the snapshot's Node objects.
func (s *Snapshot) Nodes() []*corev1.Node { return s.objs.Nodes }

// Objects returns the objects the snapshot was made of.
func (s *Snapshot) Objects() Objects { return s.objs }

// Bad returns the snapshot's own bad objects (Objects.Bad) and the duplicate Services it left
// out.
func (s *Snapshot) Bad() []BadObject { return s.bad }

// Diff returns the Delta that leads from the snapshot prev to s: the Services whose object or
// EndpointSlices differ in content, whether the Nodes do, and the objects added, changed or
// removed. It compares every object, for sources that read everything again anyway.
func (s *Snapshot) Diff(prev *Snapshot) Delta {
	d := Delta{Store: s, Bad: s.bad, Services: map[model.ServiceName]struct{}{}}
	for name, svc := range s.services {
		if !reflect.DeepEqual(prev.services[name], svc) {
			d.Services[name] = struct{}{}
		}
	}
	for name := range prev.services {
		if s.services[name] == nil {
			d.Services[name] = struct{}{}
		}
	}
	for name, esl := range s.slices {
		if !reflect.DeepEqual(prev.slices[name], esl) {
			d.Services[name] = struct{}{}
		}
	}
	for name := range prev.slices {
		if _, ok := s.slices[name]; !ok {
			d.Services[name] = struct{}{}
		}
	}
	d.Node = !reflect.DeepEqual(prev.objs.Nodes, s.objs.Nodes)
	d.Events = Events{Services: countChanged(prev.objs.Services, s.objs.Services),
		EndpointSlices: countChanged(prev.objs.EndpointSlices, s.objs.EndpointSlices)}
	return d
}
