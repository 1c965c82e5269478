package e2e

import (
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// serviceMonitor is the part of the Prometheus Operator's ServiceMonitor
// (monitoring.coreos.com/v1) that k8s/monitoring uses; decoding strictly
// into it fails on any field it does not know.
type serviceMonitor struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Metadata   metav1.ObjectMeta `json:"metadata"`
	Spec       struct {
		Selector  metav1.LabelSelector `json:"selector"`
		Endpoints []struct {
			Port          string `json:"port"`
			Path          string `json:"path"`
			Interval      string `json:"interval"`
			Authorization struct {
				Type        string                   `json:"type"`
				Credentials corev1.SecretKeySelector `json:"credentials"`
			} `json:"authorization"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// TestManifestsMonitoring checks that Prometheus, given k8s/monitoring,
// scrapes the chatd Service's /metrics with the admin token the pods use.
func TestManifestsMonitoring(t *testing.T) {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(filesys.MakeFsOnDisk(), filepath.Join(repoRoot(t), "k8s/monitoring"))
	if err != nil {
		t.Fatalf("kustomize k8s/monitoring: %v", err)
	}
	if n := len(rm.Resources()); n != 1 {
		t.Fatalf("k8s/monitoring renders %d documents, want the ServiceMonitor", n)
	}
	doc, err := rm.Resources()[0].AsYAML()
	if err != nil {
		t.Fatal(err)
	}
	var sm serviceMonitor
	if err := yaml.UnmarshalStrict(doc, &sm); err != nil {
		t.Fatalf("ServiceMonitor does not decode strictly: %v\n%s", err, doc)
	}
	if sm.APIVersion != "monitoring.coreos.com/v1" || sm.Kind != "ServiceMonitor" {
		t.Fatalf("kind %s %s", sm.APIVersion, sm.Kind)
	}

	base := renderManifests(t, "k8s/base")
	var svc *corev1.Service
	sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range base.services {
		if sel.Matches(labels.Set(s.Labels)) {
			if svc != nil {
				t.Fatalf("the selector matches both %s and %s: Prometheus would scrape each pod twice", svc.Name, s.Name)
			}
			svc = s
		}
	}
	if svc == nil {
		t.Fatal("the ServiceMonitor selects no Service of the base")
	}
	if len(sm.Spec.Endpoints) != 1 {
		t.Fatalf("%d endpoints", len(sm.Spec.Endpoints))
	}
	ep := sm.Spec.Endpoints[0]
	found := false
	for _, p := range svc.Spec.Ports {
		found = found || p.Name == ep.Port
	}
	if !found {
		t.Errorf("endpoint port %q is not a port of Service %s", ep.Port, svc.Name)
	}
	if ep.Path != "/metrics" {
		t.Errorf("scrape path %q, want /metrics", ep.Path)
	}
	// The scrape authenticates with the Secret key the pods read
	// CHAT_ADMIN_TOKEN from.
	if ep.Authorization.Type != "Bearer" {
		t.Errorf("authorization type %q, want Bearer", ep.Authorization.Type)
	}
	var ref *corev1.SecretKeySelector
	for _, d := range base.deployments {
		for _, c := range d.Spec.Template.Spec.Containers {
			for _, e := range c.Env {
				if e.Name == "CHAT_ADMIN_TOKEN" && e.ValueFrom != nil {
					ref = e.ValueFrom.SecretKeyRef
				}
			}
		}
	}
	if ref == nil {
		t.Fatal("the Deployment takes CHAT_ADMIN_TOKEN from no Secret")
	}
	if got := ep.Authorization.Credentials; got.Name != ref.Name || got.Key != ref.Key {
		t.Errorf("scrape token from %s/%s, but the pods read CHAT_ADMIN_TOKEN from %s/%s", got.Name, got.Key, ref.Name, ref.Key)
	}
}
