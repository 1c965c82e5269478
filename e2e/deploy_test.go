package e2e

// Tests of the deployment artifacts: the kustomize manifests (rendered with
// krusty, the library behind `kubectl kustomize`, decoded strictly into
// k8s.io/api types and cross-checked against what chatd really serves and
// reads) and the Dockerfile (parsed with buildkit's parser, its build
// command run here, the result checked to be a static binary).

import (
	"bytes"
	"debug/elf"
	"encoding/base64"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/chatd/chatd/internal/testsvc"
)

// repoRoot is the module root (the e2e package's parent).
func repoRoot(t testing.TB) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Dir(wd)
}

// manifests is a rendered kustomization, decoded.
type manifests struct {
	deployments  []*appsv1.Deployment
	statefulSets []*appsv1.StatefulSet
	services     []*corev1.Service
	configMaps   []*corev1.ConfigMap
	secrets      []*corev1.Secret
	hpas         []*autoscalingv2.HorizontalPodAutoscaler
	pdbs         []*policyv1.PodDisruptionBudget
	ingresses    []*networkingv1.Ingress
	netpols      []*networkingv1.NetworkPolicy
	jobs         []*batchv1.Job
	kinds        map[string]int
}

// renderManifests runs kustomize on dir (relative to the repo root) and
// decodes every document strictly: a field the API type does not know (a
// typo, a wrong indentation level) fails the test.
func renderManifests(t *testing.T, dir string) *manifests {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(filesys.MakeFsOnDisk(), filepath.Join(repoRoot(t), dir))
	if err != nil {
		t.Fatalf("kustomize %s: %v", dir, err)
	}
	m := &manifests{kinds: map[string]int{}}
	for _, r := range rm.Resources() {
		doc, err := r.AsYAML()
		if err != nil {
			t.Fatalf("%s: %s/%s: %v", dir, r.GetKind(), r.GetName(), err)
		}
		kind := r.GetKind()
		m.kinds[kind]++
		var target any
		switch kind {
		case "Deployment":
			v := &appsv1.Deployment{}
			m.deployments, target = append(m.deployments, v), v
		case "StatefulSet":
			v := &appsv1.StatefulSet{}
			m.statefulSets, target = append(m.statefulSets, v), v
		case "Service":
			v := &corev1.Service{}
			m.services, target = append(m.services, v), v
		case "ConfigMap":
			v := &corev1.ConfigMap{}
			m.configMaps, target = append(m.configMaps, v), v
		case "Secret":
			v := &corev1.Secret{}
			m.secrets, target = append(m.secrets, v), v
		case "HorizontalPodAutoscaler":
			v := &autoscalingv2.HorizontalPodAutoscaler{}
			m.hpas, target = append(m.hpas, v), v
		case "PodDisruptionBudget":
			v := &policyv1.PodDisruptionBudget{}
			m.pdbs, target = append(m.pdbs, v), v
		case "Ingress":
			v := &networkingv1.Ingress{}
			m.ingresses, target = append(m.ingresses, v), v
		case "NetworkPolicy":
			v := &networkingv1.NetworkPolicy{}
			m.netpols, target = append(m.netpols, v), v
		case "Job":
			target = &batchv1.Job{}
			m.jobs = append(m.jobs, target.(*batchv1.Job))
		case "ServiceAccount":
			target = &corev1.ServiceAccount{}
		case "Namespace":
			target = &corev1.Namespace{}
		default:
			t.Errorf("%s: unexpected kind %s (%s): add it to the test", dir, kind, r.GetName())
			continue
		}
		if err := yaml.UnmarshalStrict(doc, target); err != nil {
			t.Errorf("%s: %s/%s does not decode strictly into its API type: %v\n%s", dir, kind, r.GetName(), err, doc)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	return m
}

func (m *manifests) deployment(t *testing.T, name string) *appsv1.Deployment {
	t.Helper()
	for _, d := range m.deployments {
		if d.Name == name {
			return d
		}
	}
	t.Fatalf("no Deployment %s", name)
	return nil
}

func (m *manifests) service(name string) *corev1.Service {
	for _, s := range m.services {
		if s.Name == name {
			return s
		}
	}
	return nil
}

func (m *manifests) configMap(name string) *corev1.ConfigMap {
	for _, c := range m.configMaps {
		if c.Name == name {
			return c
		}
	}
	return nil
}

func (m *manifests) secret(name string) *corev1.Secret {
	for _, s := range m.secrets {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// chatdEnvVars returns the CHAT_* variables `chatd serve` reads, parsed
// from its --help output ("(env CHAT_X)"), and the same for `chatd migrate`.
var chatdEnvOnce struct {
	sync.Once
	serve, migrate map[string]bool
	err            error
}

func chatdEnvVars(t *testing.T) (serve, migrate map[string]bool) {
	t.Helper()
	bin := testsvc.ChatdBinary(t)
	chatdEnvOnce.Do(func() {
		re := regexp.MustCompile(`\(env (CHAT_[A-Z0-9_]+)\)`)
		read := func(args ...string) map[string]bool {
			out, _ := exec.Command(bin, args...).CombinedOutput() // --help exits 0 or 2
			vars := map[string]bool{}
			for _, m := range re.FindAllStringSubmatch(string(out), -1) {
				vars[m[1]] = true
			}
			if len(vars) == 0 && chatdEnvOnce.err == nil {
				chatdEnvOnce.err = fmt.Errorf("chatd %s: no (env CHAT_*) in the usage:\n%s", strings.Join(args, " "), out)
			}
			return vars
		}
		chatdEnvOnce.serve = read("serve", "--help")
		chatdEnvOnce.migrate = read("migrate", "--help")
	})
	if chatdEnvOnce.err != nil {
		t.Fatal(chatdEnvOnce.err)
	}
	return chatdEnvOnce.serve, chatdEnvOnce.migrate
}

// containerEnv resolves a container's environment as the kubelet would
// (envFrom ConfigMaps/Secrets, then env), failing on references to objects
// or keys the render does not contain when external is false. Values from
// fieldRefs and Secrets are given as "<fieldRef:...>" / "<secret:...>".
func containerEnv(t *testing.T, m *manifests, where string, c corev1.Container, external bool) map[string]string {
	t.Helper()
	env := map[string]string{}
	for _, ef := range c.EnvFrom {
		switch {
		case ef.ConfigMapRef != nil:
			cm := m.configMap(ef.ConfigMapRef.Name)
			if cm == nil {
				t.Errorf("%s: envFrom ConfigMap %s is not in the render", where, ef.ConfigMapRef.Name)
				continue
			}
			for k, v := range cm.Data {
				env[ef.Prefix+k] = v
			}
		case ef.SecretRef != nil:
			s := m.secret(ef.SecretRef.Name)
			if s == nil {
				if !external {
					t.Errorf("%s: envFrom Secret %s is not in the render", where, ef.SecretRef.Name)
				}
				continue
			}
			for k := range s.Data {
				env[ef.Prefix+k] = "<secret>"
			}
		}
	}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			env[e.Name] = e.Value
		case e.ValueFrom.FieldRef != nil:
			env[e.Name] = "<fieldRef:" + e.ValueFrom.FieldRef.FieldPath + ">"
		case e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			s := m.secret(ref.Name)
			switch {
			case s != nil:
				v, ok := s.Data[ref.Key]
				if !ok {
					v, ok = []byte(s.StringData[ref.Key]), s.StringData[ref.Key] != ""
				}
				if !ok {
					t.Errorf("%s: %s: Secret %s has no key %s", where, e.Name, ref.Name, ref.Key)
				}
				env[e.Name] = string(v)
			case !external:
				t.Errorf("%s: %s: Secret %s is not in the render", where, e.Name, ref.Name)
			default:
				env[e.Name] = "<secret:" + ref.Name + "/" + ref.Key + ">"
			}
		case e.ValueFrom.ConfigMapKeyRef != nil:
			ref := e.ValueFrom.ConfigMapKeyRef
			cm := m.configMap(ref.Name)
			if cm == nil || cm.Data[ref.Key] == "" {
				t.Errorf("%s: %s: ConfigMap %s key %s is not in the render", where, e.Name, ref.Name, ref.Key)
				continue
			}
			env[e.Name] = cm.Data[ref.Key]
		default:
			env[e.Name] = "<resource>"
		}
	}
	return env
}

func findPort(c corev1.Container, name string, proto corev1.Protocol) (corev1.ContainerPort, bool) {
	for _, p := range c.Ports {
		if p.Name == name && (proto == "" || p.Protocol == proto || p.Protocol == "" && proto == corev1.ProtocolTCP) {
			return p, true
		}
	}
	return corev1.ContainerPort{}, false
}

// resolvePort resolves a probe's or a Service's target port against the
// container's ports.
func resolvePort(t *testing.T, where string, c corev1.Container, p intstr.IntOrString, proto corev1.Protocol) int32 {
	t.Helper()
	if p.Type == intstr.Int {
		for _, cp := range c.Ports {
			if cp.ContainerPort == p.IntVal && (cp.Protocol == proto || cp.Protocol == "" && proto == corev1.ProtocolTCP) {
				return p.IntVal
			}
		}
		t.Errorf("%s: port %d/%s is not a port of container %s", where, p.IntVal, proto, c.Name)
		return p.IntVal
	}
	cp, ok := findPort(c, p.StrVal, proto)
	if !ok {
		t.Errorf("%s: named port %q/%s is not a port of container %s", where, p.StrVal, proto, c.Name)
		return 0
	}
	return cp.ContainerPort
}

// portOf is the port of a listen address such as ":4000".
func portOf(t *testing.T, what, addr string) int32 {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("%s=%q: %v", what, addr, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("%s=%q: %v", what, addr, err)
	}
	return int32(n)
}

// checkChatd checks the chatd Deployment and everything that refers to it
// in a render. external: the chatd-secrets Secret is provided outside it.
func checkChatd(t *testing.T, m *manifests, external bool) {
	serveVars, migrateVars := chatdEnvVars(t)
	dep := m.deployment(t, "chatd")
	spec := dep.Spec.Template.Spec
	if len(spec.Containers) != 1 {
		t.Fatalf("chatd pods have %d containers, want 1", len(spec.Containers))
	}
	c := spec.Containers[0]
	env := containerEnv(t, m, "Deployment chatd", c, external)

	// Every CHAT_* variable is one chatd reads: a misspelt one is silently
	// ignored and leaves the default in force.
	for name := range env {
		if strings.HasPrefix(name, "CHAT_") && !serveVars[name] {
			t.Errorf("Deployment chatd sets %s, which `chatd serve` does not read (it reads %v)", name, slices.Sorted(func(yield func(string) bool) {
				for k := range serveVars {
					if !yield(k) {
						return
					}
				}
			}))
		}
	}
	// And the ones a clustered production pod needs are there.
	for _, name := range []string{"CHAT_NODE_NAME", "CHAT_CLUSTER_ADVERTISE", "CHAT_JWT_SECRET", "CHAT_DATABASE_URL",
		"CHAT_ADMIN_TOKEN", "CHAT_REDIS_URL", "CHAT_CLUSTER_JOIN", "CHAT_SHUTDOWN_TIMEOUT", "CHAT_MIGRATE", "CHAT_CLUSTER_KEY"} {
		if _, ok := env[name]; !ok {
			t.Errorf("Deployment chatd does not set %s", name)
		}
	}
	if got := env["CHAT_NODE_NAME"]; got != "<fieldRef:metadata.name>" {
		t.Errorf("CHAT_NODE_NAME = %s, want the pod name (fieldRef metadata.name)", got)
	}
	if got := env["CHAT_CLUSTER_ADVERTISE"]; got != "<fieldRef:status.podIP>" {
		t.Errorf("CHAT_CLUSTER_ADVERTISE = %s, want the pod IP (fieldRef status.podIP)", got)
	}
	for _, name := range []string{"CHAT_JWT_SECRET", "CHAT_DATABASE_URL", "CHAT_ADMIN_TOKEN", "CHAT_CLUSTER_KEY"} {
		found := false
		for _, e := range c.Env {
			if e.Name == name && e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
				found = true
			}
		}
		if !found {
			t.Errorf("%s does not come from a Secret (secretKeyRef)", name)
		}
	}
	if !external {
		// The gossip key is one chatd accepts: base64 of 16, 24 or 32 bytes.
		if k, err := base64.StdEncoding.DecodeString(env["CHAT_CLUSTER_KEY"]); err != nil || len(k) != 16 && len(k) != 24 && len(k) != 32 {
			t.Errorf("CHAT_CLUSTER_KEY %q is not base64 of 16, 24 or 32 bytes (%d bytes, %v)", env["CHAT_CLUSTER_KEY"], len(k), err)
		}
	}
	if env["CHAT_MIGRATE"] != "false" {
		t.Errorf("CHAT_MIGRATE = %q: pods must not migrate, the Job does", env["CHAT_MIGRATE"])
	}

	// Ports: the HTTP port is the one chatd listens on (CHAT_ADDR), the
	// gossip ports the memberlist bind (CHAT_CLUSTER_ADDR), TCP and UDP.
	httpAddr, gossipAddr := ":4000", ":7946" // chatd's defaults
	if v := env["CHAT_ADDR"]; v != "" {
		httpAddr = v
	}
	if v := env["CHAT_CLUSTER_ADDR"]; v != "" {
		gossipAddr = v
	}
	httpPort, gossipPort := portOf(t, "CHAT_ADDR", httpAddr), portOf(t, "CHAT_CLUSTER_ADDR", gossipAddr)
	if p, ok := findPort(c, "http", corev1.ProtocolTCP); !ok || p.ContainerPort != httpPort {
		t.Errorf("container port http = %+v, want %d (CHAT_ADDR %s)", p, httpPort, httpAddr)
	}
	for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP} {
		found := false
		for _, p := range c.Ports {
			if p.ContainerPort == gossipPort && p.Protocol == proto {
				found = true
			}
		}
		if !found {
			t.Errorf("no container port %d/%s for gossip (CHAT_CLUSTER_ADDR %s)", gossipPort, proto, gossipAddr)
		}
	}

	// Probes: on the HTTP port, at paths chatd serves. A real chatd answers
	// each path with 200.
	probes := map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe}
	if c.StartupProbe != nil {
		probes["startup"] = c.StartupProbe
	}
	wantPath := map[string]string{"liveness": "/health/live", "readiness": "/health/ready"}
	node := startServer(t, nil)
	for kind, p := range probes {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("%s probe: want an httpGet probe, got %+v", kind, p)
			continue
		}
		if w := wantPath[kind]; w != "" && p.HTTPGet.Path != w {
			t.Errorf("%s probe path %s, want %s", kind, p.HTTPGet.Path, w)
		}
		if port := resolvePort(t, kind+" probe", c, p.HTTPGet.Port, corev1.ProtocolTCP); port != httpPort {
			t.Errorf("%s probe port %d is not chatd's HTTP port %d", kind, port, httpPort)
		}
		resp, err := http.Get(node.URL() + p.HTTPGet.Path)
		if err != nil {
			t.Errorf("%s probe: GET %s on a real chatd: %v", kind, p.HTTPGet.Path, err)
			continue
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s probe: GET %s on a real chatd: %s, want 200", kind, p.HTTPGet.Path, resp.Status)
		}
	}

	// Shutdown: the kubelet's SIGKILL comes terminationGracePeriodSeconds
	// after the preStop hook starts; chatd needs the preStop time plus
	// CHAT_SHUTDOWN_TIMEOUT (which includes CHAT_DRAIN_DELAY).
	shutdown, drain := 20*time.Second, time.Duration(0)
	if v := env["CHAT_SHUTDOWN_TIMEOUT"]; v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("CHAT_SHUTDOWN_TIMEOUT=%q: %v", v, err)
		}
		shutdown = d
	}
	if v := env["CHAT_DRAIN_DELAY"]; v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("CHAT_DRAIN_DELAY=%q: %v", v, err)
		}
		drain = d
	}
	if drain >= shutdown {
		t.Errorf("CHAT_DRAIN_DELAY %s leaves no time of CHAT_SHUTDOWN_TIMEOUT %s to close sockets and drain the queue", drain, shutdown)
	}
	var preStop time.Duration
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil {
		t.Error("no preStop hook: the pod is killed before the ingress stops routing to it")
	} else if s := c.Lifecycle.PreStop.Sleep; s != nil {
		preStop = time.Duration(s.Seconds) * time.Second
	} else {
		t.Errorf("preStop is not a sleep action (distroless has no shell for exec sleep): %+v", c.Lifecycle.PreStop)
	}
	if spec.TerminationGracePeriodSeconds == nil {
		t.Fatal("no terminationGracePeriodSeconds: the default 30 s")
	}
	grace := time.Duration(*spec.TerminationGracePeriodSeconds) * time.Second
	if grace <= preStop+shutdown {
		t.Errorf("terminationGracePeriodSeconds %s <= preStop %s + CHAT_SHUTDOWN_TIMEOUT %s: SIGKILL would cut the drain", grace, preStop, shutdown)
	}

	// Resources: requests (the HPA's CPU utilization is relative to them)
	// and a memory limit.
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("resources: want cpu and memory requests and a memory limit, got %+v", c.Resources)
	}
	if sc := c.SecurityContext; sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("container may escalate privileges")
	}
	if sc := spec.SecurityContext; sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
		t.Error("pod does not require runAsNonRoot")
	}

	// Selectors match the pod labels.
	podLabels := labels.Set(dep.Spec.Template.Labels)
	sel, err := labelSelector(dep.Spec.Selector.MatchLabels)
	if err != nil || !sel.Matches(podLabels) {
		t.Errorf("Deployment selector %v does not match its pod labels %v", dep.Spec.Selector.MatchLabels, podLabels)
	}
	selects := func(s *corev1.Service) bool {
		return len(s.Spec.Selector) > 0 && labels.SelectorFromSet(s.Spec.Selector).Matches(podLabels)
	}

	// Client Service: selects the pods, targets the HTTP port.
	client := m.service("chatd")
	if client == nil {
		t.Fatal("no Service chatd")
	}
	if !selects(client) {
		t.Errorf("Service chatd selector %v does not match the pod labels %v", client.Spec.Selector, podLabels)
	}
	for _, p := range client.Spec.Ports {
		if port := resolvePort(t, "Service chatd port "+p.Name, c, p.TargetPort, p.Protocol); port != httpPort {
			t.Errorf("Service chatd port %s targets %d, not chatd's HTTP port %d", p.Name, port, httpPort)
		}
	}

	// Headless gossip Service: the seeds of CHAT_CLUSTER_JOIN.
	join := env["CHAT_CLUSTER_JOIN"]
	host, jp, err := net.SplitHostPort(join)
	if err != nil {
		t.Fatalf("CHAT_CLUSTER_JOIN=%q is not host:port: %v", join, err)
	}
	seedName := strings.Split(host, ".")[0]
	seeds := m.service(seedName)
	if seeds == nil {
		t.Fatalf("CHAT_CLUSTER_JOIN=%s: no Service %s in the render", join, seedName)
	}
	if seeds.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Errorf("Service %s is not headless (clusterIP %q): its DNS name would be one virtual IP, not every pod", seedName, seeds.Spec.ClusterIP)
	}
	if !seeds.Spec.PublishNotReadyAddresses {
		t.Errorf("Service %s does not publishNotReadyAddresses: starting pods could not find each other", seedName)
	}
	if !selects(seeds) {
		t.Errorf("Service %s selector %v does not match the pod labels %v", seedName, seeds.Spec.Selector, podLabels)
	}
	protos := map[corev1.Protocol]bool{}
	for _, p := range seeds.Spec.Ports {
		proto := p.Protocol
		if proto == "" {
			proto = corev1.ProtocolTCP
		}
		if target := resolvePort(t, "Service "+seedName+" port "+p.Name, c, p.TargetPort, proto); target != gossipPort {
			t.Errorf("Service %s port %s targets %d, not the gossip port %d", seedName, p.Name, target, gossipPort)
		}
		if strconv.Itoa(int(p.Port)) == jp {
			protos[proto] = true
		}
	}
	if !protos[corev1.ProtocolTCP] || !protos[corev1.ProtocolUDP] {
		t.Errorf("Service %s does not expose the gossip port %s over TCP and UDP: %+v", seedName, jp, seeds.Spec.Ports)
	}

	checkNetworkPolicy(t, m, c, podLabels, httpPort, gossipPort)

	// HPA: scales this Deployment, on CPU.
	if len(m.hpas) != 1 {
		t.Fatalf("%d HorizontalPodAutoscalers, want 1", len(m.hpas))
	}
	hpa := m.hpas[0]
	if ref := hpa.Spec.ScaleTargetRef; ref.Kind != "Deployment" || ref.Name != dep.Name || ref.APIVersion != "apps/v1" {
		t.Errorf("HPA targets %+v, not Deployment %s", ref, dep.Name)
	}
	cpu := false
	for _, mt := range hpa.Spec.Metrics {
		if mt.Resource != nil && mt.Resource.Name == corev1.ResourceCPU {
			cpu = true
		}
	}
	if !cpu {
		t.Error("HPA does not scale on CPU")
	}
	if hpa.Spec.MinReplicas == nil || *hpa.Spec.MinReplicas < 2 || hpa.Spec.MaxReplicas < *hpa.Spec.MinReplicas {
		t.Errorf("HPA replicas min %v max %d: want at least 2 pods", hpa.Spec.MinReplicas, hpa.Spec.MaxReplicas)
	}

	// PDB: selects the pods.
	if len(m.pdbs) != 1 {
		t.Fatalf("%d PodDisruptionBudgets, want 1", len(m.pdbs))
	}
	if sel, err := labelSelector(m.pdbs[0].Spec.Selector.MatchLabels); err != nil || !sel.Matches(podLabels) {
		t.Errorf("PDB selector %v does not match the pod labels %v", m.pdbs[0].Spec.Selector, podLabels)
	}

	// Ingress: ingress-nginx, to the client Service's port, sticky, with
	// WebSocket timeouts longer than the heartbeat.
	if len(m.ingresses) != 1 {
		t.Fatalf("%d Ingresses, want 1", len(m.ingresses))
	}
	ing := m.ingresses[0]
	if ing.Spec.IngressClassName == nil || *ing.Spec.IngressClassName != "nginx" {
		t.Errorf("Ingress class %v, want nginx", ing.Spec.IngressClassName)
	}
	a := ing.Annotations
	if a["nginx.ingress.kubernetes.io/affinity"] != "cookie" {
		t.Errorf("Ingress: no cookie affinity annotation: %v", a)
	}
	for _, k := range []string{"proxy-read-timeout", "proxy-send-timeout"} {
		v, err := strconv.Atoi(a["nginx.ingress.kubernetes.io/"+k])
		if err != nil || v <= 75 {
			t.Errorf("Ingress %s = %q: want seconds > 75 (the heartbeat is 30 s, the idle limit 60 s)", k, a["nginx.ingress.kubernetes.io/"+k])
		}
	}
	for _, rule := range ing.Spec.Rules {
		for _, p := range rule.HTTP.Paths {
			b := p.Backend.Service
			if b == nil || b.Name != client.Name {
				t.Errorf("Ingress path %s goes to %+v, not Service %s", p.Path, b, client.Name)
				continue
			}
			found := false
			for _, sp := range client.Spec.Ports {
				if sp.Name == b.Port.Name && b.Port.Name != "" || sp.Port == b.Port.Number && b.Port.Number != 0 {
					found = true
				}
			}
			if !found {
				t.Errorf("Ingress path %s: Service %s has no port %+v", p.Path, client.Name, b.Port)
			}
		}
	}

	// Migration Job: chatd migrate up, against the same database.
	if len(m.jobs) != 1 {
		t.Fatalf("%d Jobs, want the migration Job", len(m.jobs))
	}
	job := m.jobs[0]
	jc := job.Spec.Template.Spec.Containers[0]
	if jc.Image != c.Image {
		t.Errorf("migration Job image %s differs from the Deployment's %s", jc.Image, c.Image)
	}
	if got := strings.Join(append(slices.Clone(jc.Command), jc.Args...), " "); got != "migrate up" {
		t.Errorf("migration Job runs %q, want `migrate up` (the image's entrypoint is chatd)", got)
	}
	jenv := containerEnv(t, m, "Job "+job.Name, jc, external)
	for name := range jenv {
		if strings.HasPrefix(name, "CHAT_") && !migrateVars[name] {
			t.Errorf("migration Job sets %s, which `chatd migrate` does not read", name)
		}
	}
	if jenv["CHAT_DATABASE_URL"] != env["CHAT_DATABASE_URL"] {
		t.Errorf("migration Job database %q differs from the Deployment's %q", jenv["CHAT_DATABASE_URL"], env["CHAT_DATABASE_URL"])
	}
}

// checkNetworkPolicy checks that one NetworkPolicy selects the chatd pods
// and admits their gossip port (TCP and UDP) only from chatd pods, while
// their HTTP port is open to every source (the ingress controller).
func checkNetworkPolicy(t *testing.T, m *manifests, c corev1.Container, podLabels labels.Set, httpPort, gossipPort int32) {
	t.Helper()
	var np *networkingv1.NetworkPolicy
	for _, p := range m.netpols {
		if sel, err := labelSelector(p.Spec.PodSelector.MatchLabels); err == nil && sel.Matches(podLabels) {
			if np != nil {
				t.Errorf("NetworkPolicies %s and %s both select the chatd pods", np.Name, p.Name)
			}
			np = p
		}
	}
	if np == nil {
		t.Error("no NetworkPolicy selects the chatd pods: any pod reaching the gossip port can add members")
		return
	}
	if !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) {
		t.Errorf("NetworkPolicy %s does not restrict ingress: policyTypes %v", np.Name, np.Spec.PolicyTypes)
	}
	// For each port and protocol: is it admitted from anywhere, from chatd
	// pods, from something else?
	type access struct{ anywhere, chatd, other bool }
	got := map[string]*access{}
	key := func(port int32, proto corev1.Protocol) string { return fmt.Sprintf("%d/%s", port, proto) }
	for _, rule := range np.Spec.Ingress {
		var ports []string
		if len(rule.Ports) == 0 {
			t.Errorf("NetworkPolicy %s: an ingress rule admits every port: %+v", np.Name, rule)
			continue
		}
		for _, p := range rule.Ports {
			proto := corev1.ProtocolTCP
			if p.Protocol != nil {
				proto = *p.Protocol
			}
			if p.Port == nil || p.EndPort != nil {
				t.Errorf("NetworkPolicy %s: a rule admits a port range or every port of %s", np.Name, proto)
				continue
			}
			ports = append(ports, key(resolvePort(t, "NetworkPolicy "+np.Name, c, *p.Port, proto), proto))
		}
		for _, k := range ports {
			a := got[k]
			if a == nil {
				a = &access{}
				got[k] = a
			}
			if len(rule.From) == 0 {
				a.anywhere = true
			}
			for _, peer := range rule.From {
				// An empty or expression selector (every pod, or some set
				// this check does not evaluate) counts as "other".
				sel, err := labelSelector(nil)
				if peer.PodSelector != nil && len(peer.PodSelector.MatchExpressions) == 0 {
					sel, err = labelSelector(peer.PodSelector.MatchLabels)
				}
				if err == nil && peer.NamespaceSelector == nil && peer.IPBlock == nil && sel.Matches(podLabels) {
					a.chatd = true
				} else {
					a.other = true
				}
			}
		}
	}
	for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP} {
		a := got[key(gossipPort, proto)]
		if a == nil || !a.chatd || a.anywhere || a.other {
			t.Errorf("NetworkPolicy %s: gossip port %s is admitted %+v, want from chatd pods only", np.Name, key(gossipPort, proto), a)
		}
	}
	if a := got[key(httpPort, corev1.ProtocolTCP)]; a == nil || !a.anywhere {
		t.Errorf("NetworkPolicy %s: HTTP port %d is admitted %+v, want from anywhere (the ingress controller)", np.Name, httpPort, a)
	}
}

func labelSelector(ml map[string]string) (labels.Selector, error) {
	if len(ml) == 0 {
		return nil, fmt.Errorf("empty selector")
	}
	return labels.SelectorFromSet(ml), nil
}

func TestManifestsBase(t *testing.T) {
	for _, dir := range []string{"k8s", "k8s/base"} {
		t.Run(strings.ReplaceAll(dir, "/", "_"), func(t *testing.T) {
			m := renderManifests(t, dir)
			t.Logf("%s renders %v", dir, m.kinds)
			for _, kind := range []string{"Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Ingress", "Job", "NetworkPolicy"} {
				if m.kinds[kind] == 0 {
					t.Errorf("%s renders no %s", dir, kind)
				}
			}
			if len(m.secrets) != 0 {
				t.Errorf("the base renders Secrets %v: secrets must not live in the base", m.secrets)
			}
			checkChatd(t, m, true)
		})
	}
}

func TestManifestsDemo(t *testing.T) {
	m := renderManifests(t, "k8s/overlays/demo")
	t.Logf("demo renders %v", m.kinds)
	checkChatd(t, m, false)
	dep := m.deployment(t, "chatd")
	env := containerEnv(t, m, "demo Deployment chatd", dep.Spec.Template.Spec.Containers[0], false)

	// The services chatd is pointed at exist in the overlay, on the right
	// ports, and select their pods.
	for _, v := range []string{"CHAT_REDIS_URL", "CHAT_DATABASE_URL"} {
		raw := env[v]
		i := strings.Index(raw, "://")
		if i < 0 {
			t.Errorf("%s=%q is not a URL", v, raw)
			continue
		}
		hostport := raw[i+3:]
		hostport = hostport[strings.LastIndex(hostport, "@")+1:]
		hostport, _, _ = strings.Cut(hostport, "/")
		host, port, err := net.SplitHostPort(hostport)
		if err != nil {
			t.Errorf("%s=%q: %v", v, raw, err)
			continue
		}
		svc := m.service(host)
		if svc == nil {
			t.Errorf("%s=%q: no Service %s in the demo", v, raw, host)
			continue
		}
		ok := false
		for _, p := range svc.Spec.Ports {
			ok = ok || strconv.Itoa(int(p.Port)) == port
		}
		if !ok {
			t.Errorf("%s=%q: Service %s has no port %s", v, raw, host, port)
		}
		var backed bool
		for _, d := range m.deployments {
			backed = backed || labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(d.Spec.Template.Labels))
		}
		for _, s := range m.statefulSets {
			backed = backed || labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(s.Spec.Template.Labels))
		}
		if !backed {
			t.Errorf("Service %s selects no workload of the demo", host)
		}
	}
	// The database URL's credentials are PostgreSQL's.
	var pg map[string]string
	for _, s := range m.secrets {
		if s.Name == "postgres" || strings.HasPrefix(s.Name, "postgres-") {
			pg = map[string]string{}
			for k, v := range s.Data {
				pg[k] = string(v)
			}
		}
	}
	want := fmt.Sprintf("postgres://%s:%s@", pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"])
	if !strings.HasPrefix(env["CHAT_DATABASE_URL"], want) || !strings.Contains(env["CHAT_DATABASE_URL"], "/"+pg["POSTGRES_DB"]) {
		t.Errorf("CHAT_DATABASE_URL %q does not match the PostgreSQL credentials %v", env["CHAT_DATABASE_URL"], pg)
	}
	for _, s := range m.statefulSets {
		if m.service(s.Spec.ServiceName) == nil {
			t.Errorf("StatefulSet %s: serviceName %s is not a Service", s.Name, s.Spec.ServiceName)
		}
	}
	// Redis holds the room logs: an append-only file, fsynced every
	// second, in a directory on a persistent volume.
	var redisArgs []string
	var redisSet *appsv1.StatefulSet
	for _, s := range m.statefulSets {
		if s.Name == "redis" {
			redisSet, redisArgs = s, s.Spec.Template.Spec.Containers[0].Args
		}
	}
	if redisSet == nil {
		t.Fatal("the demo has no Redis StatefulSet")
	}
	argAfter := func(flag string) string {
		if i := slices.Index(redisArgs, flag); i >= 0 && i+1 < len(redisArgs) {
			return redisArgs[i+1]
		}
		return ""
	}
	if argAfter("--appendonly") != "yes" || argAfter("--appendfsync") != "everysec" {
		t.Errorf("demo Redis args %q: want --appendonly yes --appendfsync everysec", redisArgs)
	}
	mounted := false
	for _, vm := range redisSet.Spec.Template.Spec.Containers[0].VolumeMounts {
		for _, vc := range redisSet.Spec.VolumeClaimTemplates {
			mounted = mounted || (vm.Name == vc.Name && vm.MountPath == argAfter("--dir"))
		}
	}
	if !mounted {
		t.Errorf("demo Redis keeps its append-only file in %q, which is not a volume claim's mount", argAfter("--dir"))
	}
	for _, img := range []string{dep.Spec.Template.Spec.Containers[0].Image, m.jobs[0].Spec.Template.Spec.Containers[0].Image} {
		if img != "chatd:dev" {
			t.Errorf("demo image %s, want the locally built chatd:dev", img)
		}
	}
}

// dockerfile is the parsed Dockerfile: its stages' instructions.
type dfStage struct {
	from, name string
	instrs     []*parser.Node
}

func parseDockerfile(t *testing.T) []dfStage {
	t.Helper()
	f, err := os.Open(filepath.Join(repoRoot(t), "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := parser.Parse(f)
	if err != nil {
		t.Fatalf("Dockerfile: %v", err)
	}
	for _, w := range res.Warnings {
		t.Errorf("Dockerfile warning: %s", w.Short)
	}
	var stages []dfStage
	for _, n := range res.AST.Children {
		cmd := strings.ToLower(n.Value)
		if cmd == "from" {
			s := dfStage{from: n.Next.Value}
			if a := n.Next.Next; a != nil && strings.EqualFold(a.Value, "as") && a.Next != nil {
				s.name = a.Next.Value
			}
			stages = append(stages, s)
			continue
		}
		if len(stages) == 0 {
			if cmd != "arg" {
				t.Fatalf("Dockerfile: %s before FROM", n.Value)
			}
			continue
		}
		stages[len(stages)-1].instrs = append(stages[len(stages)-1].instrs, n)
	}
	return stages
}

func nodeArgs(n *parser.Node) []string {
	var out []string
	for a := n.Next; a != nil; a = a.Next {
		out = append(out, a.Value)
	}
	return out
}

// copyContext copies the build context (the repo root minus .dockerignore)
// to dst, as `docker build .` would send it.
func copyContext(t *testing.T, root, dst string) {
	t.Helper()
	f, err := os.Open(filepath.Join(root, ".dockerignore"))
	if err != nil {
		t.Fatalf(".dockerignore: %v", err)
	}
	patterns, err := ignorefile.ReadAll(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		t.Fatal(err)
	}
	for _, must := range []string{".git", "k8s", "chat.db", "e2e/js/node_modules"} {
		if ok, _ := pm.MatchesOrParentMatches(must); !ok {
			t.Errorf(".dockerignore does not exclude %s", must)
		}
	}
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		skip, err := pm.MatchesOrParentMatches(filepath.ToSlash(rel))
		if err != nil {
			return err
		}
		if skip {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		src, err := os.Open(p)
		if err != nil {
			return err
		}
		defer src.Close()
		out, err := os.Create(target)
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, src); err != nil {
			out.Close()
			return err
		}
		return out.Close()
	})
	if err != nil {
		t.Fatalf("copying the build context: %v", err)
	}
}

func TestDockerfile(t *testing.T) {
	stages := parseDockerfile(t)
	if len(stages) < 2 {
		t.Fatalf("Dockerfile has %d stages, want a multi-stage build", len(stages))
	}
	build, final := stages[0], stages[len(stages)-1]
	if !strings.HasPrefix(build.from, "golang:") {
		t.Errorf("build stage FROM %s, want a golang image", build.from)
	}
	if !strings.Contains(final.from, "distroless/static") || !strings.Contains(final.from, "nonroot") {
		t.Errorf("runtime stage FROM %s, want distroless static nonroot", final.from)
	}

	// The runtime stage: non-root user, ports, entrypoint + command, and a
	// COPY of the binary from the build stage.
	var user, entrypoint, cmd []string
	var exposed []string
	var binPath string
	for _, n := range final.instrs {
		switch strings.ToLower(n.Value) {
		case "user":
			user = nodeArgs(n)
		case "expose":
			exposed = append(exposed, nodeArgs(n)...)
		case "entrypoint":
			entrypoint = nodeArgs(n)
		case "cmd":
			cmd = nodeArgs(n)
		case "copy":
			if slices.ContainsFunc(n.Flags, func(f string) bool { return f == "--from="+build.name }) {
				args := nodeArgs(n)
				binPath = args[len(args)-1]
			}
		case "run":
			t.Errorf("runtime stage has RUN %v: distroless has no shell", nodeArgs(n))
		}
	}
	if len(user) != 1 {
		t.Errorf("runtime stage USER %v, want one non-root user", user)
	} else {
		u, _, _ := strings.Cut(user[0], ":")
		if u == "root" || u == "0" || u == "" {
			t.Errorf("runtime stage runs as %s", user[0])
		}
	}
	for _, want := range []string{"4000", "7946/tcp", "7946/udp"} {
		if !slices.Contains(exposed, want) && !(want == "4000" && slices.Contains(exposed, "4000/tcp")) {
			t.Errorf("runtime stage does not EXPOSE %s (exposes %v)", want, exposed)
		}
	}
	full := append(slices.Clone(entrypoint), cmd...)
	if len(full) < 2 || filepath.Base(full[0]) != "chatd" || full[len(full)-1] != "serve" || full[0] != binPath {
		t.Errorf("default command %v (binary copied to %s), want %s serve", full, binPath, binPath)
	}

	// The build stage's go build, run here exactly as written (on a copy of
	// the build context, with the output path moved to a temp dir).
	var buildCmd string
	env := os.Environ()
	for _, n := range build.instrs {
		switch strings.ToLower(n.Value) {
		case "run":
			if c := strings.Join(nodeArgs(n), " "); strings.Contains(c, "go build") {
				buildCmd = c
			}
		case "env":
			args := nodeArgs(n)
			for i := 0; i+1 < len(args); i += 2 {
				env = append(env, args[i]+"="+args[i+1])
			}
		}
	}
	if buildCmd == "" {
		t.Fatal("no RUN go build in the build stage")
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "./cmd/chatd"} {
		if !strings.Contains(buildCmd, want) {
			t.Errorf("build command %q lacks %s", buildCmd, want)
		}
	}
	m := regexp.MustCompile(`-o\s+(\S+)`).FindStringSubmatch(buildCmd)
	if m == nil {
		t.Fatalf("build command %q has no -o", buildCmd)
	}
	if m[1] != "/out/chatd" && !strings.HasSuffix(binPath, filepath.Base(m[1])) {
		t.Errorf("build output %s does not match the copied binary %s", m[1], binPath)
	}
	ctxDir, outDir := t.TempDir(), t.TempDir()
	copyContext(t, repoRoot(t), ctxDir)
	out := filepath.Join(outDir, "chatd")
	cmdline := strings.Replace(buildCmd, m[0], "-o "+out, 1)
	run := exec.Command("sh", "-ec", cmdline)
	run.Dir = ctxDir
	run.Env = append(env, "GOTOOLCHAIN=local")
	start := time.Now()
	if b, err := run.CombinedOutput(); err != nil {
		t.Fatalf("RUN %s (in a copy of the build context): %v\n%s", cmdline, err, b)
	}
	t.Logf("built %s in %s", cmdline, time.Since(start).Round(time.Millisecond))

	// Static: no program interpreter (dynamic loader), no shared libraries.
	ef, err := elf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ef.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the binary has a PT_INTERP segment: it is dynamically linked and cannot run on distroless/static")
		}
	}
	if libs, _ := ef.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("the binary needs shared libraries %v", libs)
	}
	ef.Close()
	var help bytes.Buffer
	hc := exec.Command(out, "serve", "--help")
	hc.Stdout, hc.Stderr = &help, &help
	if err := hc.Run(); err != nil || !strings.Contains(help.String(), "CHAT_ADDR") {
		t.Errorf("%s serve --help: %v\n%s", out, err, help.String())
	}

	// It serves: start it as the image would (serve, on an SQLite file in
	// its working directory) and ask /health/ready.
	port := testsvc.FreePort(t)
	srv := exec.Command(out, full[1:]...)
	srv.Dir = t.TempDir()
	srv.Env = []string{"CHAT_ADDR=127.0.0.1:" + strconv.Itoa(port), "CHAT_LOG_FORMAT=json", "HOME=" + srv.Dir}
	var logs bytes.Buffer
	srv.Stdout, srv.Stderr = &logs, &logs
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = srv.Process.Signal(os.Interrupt)
		done := make(chan error, 1)
		go func() { done <- srv.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("static chatd exited with %v after SIGINT:\n%s", err, logs.String())
			}
		case <-time.After(15 * time.Second):
			_ = srv.Process.Kill()
			t.Errorf("static chatd did not exit 15 s after SIGINT")
		}
	}()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/health/ready", port))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the static binary did not become ready: %v\n%s", err, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
