// Command vcsim serves govmomi's vCenter simulator (VPX model) with an inventory read from a
// JSON file, for the vCenter adapter tests. It prints the SDK URL, with credentials, on stdout
// once the inventory is built, and exits on SIGTERM/SIGINT (or, with -exit-on-eof, when stdin
// closes, so that a simulator never outlives the test run that started it).
//
// In front of the simulator's endpoints it serves what the tests need and this govmomi's
// simulator lacks (see controls): HostSystem.DisconnectHost_Task and ReconnectHost_Task, and
// POST /vcsim/datastore to set a datastore's free space. They exist only in this test program.
//
// Build offline against Debian's golang-github-vmware-govmomi-dev:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o vcsim ./tests/vcsim
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"io/ioutil"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

const gib = int64(1) << 30

// Inventory is the JSON file given with -inventory.
type Inventory struct {
	Datacenters []Datacenter `json:"datacenters"`
}

type Datacenter struct {
	Name       string           `json:"name"`
	Clusters   []Cluster        `json:"clusters"`
	Datastores []Datastore      `json:"datastores"`
	Portgroups []string         `json:"portgroups"` // distributed port groups on one DVS per datacenter
	Vlans      map[string]int32 `json:"vlans"`      // port group -> VLAN ID (default: none, VLAN 0)
}

type Cluster struct {
	Name  string `json:"name"`
	Hosts []Host `json:"hosts"`
}

type Host struct {
	Cores    int16 `json:"cores"`
	Threads  int16 `json:"threads"` // default: cores
	MHz      int32 `json:"mhz"`     // per core
	MemoryGB int64 `json:"memory_gb"`
}

type Datastore struct {
	Name       string `json:"name"`
	CapacityGB int64  `json:"capacity_gb"`
	FreeGB     *int64 `json:"free_gb"` // default: capacity
}

// defaultInventory mirrors the names of simulator.VPX() (DC0, DC0_C0, LocalDS_0, DC0_DVPG0).
var defaultInventory = Inventory{Datacenters: []Datacenter{{
	Name:       "DC0",
	Clusters:   []Cluster{{Name: "DC0_C0", Hosts: []Host{{Cores: 8, MHz: 2000, MemoryGB: 32}}}},
	Datastores: []Datastore{{Name: "LocalDS_0", CapacityGB: 1024}},
	Portgroups: []string{"DC0_DVPG0"},
}}}

func main() {
	host := flag.String("host", "127.0.0.1", "address to listen on")
	port := flag.Int("port", 0, "port to listen on (0: any free port)")
	user := flag.String("user", "user", "the only user name accepted")
	password := flag.String("password", "pass", "the only password accepted")
	file := flag.String("inventory", "", "JSON inventory file (default: one DC like simulator.VPX())")
	exitOnEOF := flag.Bool("exit-on-eof", false, "exit when stdin is closed")
	certFile := flag.String("tls-cert", "", "PEM certificate to serve (default: Go's self-signed localhost certificate)")
	keyFile := flag.String("tls-key", "", "PEM private key of -tls-cert")
	flag.Parse()
	log.SetPrefix("vcsim: ")
	log.SetFlags(0)

	inv := defaultInventory
	if *file != "" {
		data, err := ioutil.ReadFile(*file)
		if err != nil {
			log.Fatal(err)
		}
		inv = Inventory{}
		if err := json.Unmarshal(data, &inv); err != nil {
			log.Fatalf("%s: %v", *file, err)
		}
	}

	// An empty VPX model: the service content and root folder of a vCenter, nothing else.
	model := simulator.VPX()
	model.Datacenter, model.Portgroup, model.Host, model.Cluster = 0, 0, 0, 0
	model.ClusterHost, model.Datastore, model.Machine = 0, 0, 0
	if err := model.Create(); err != nil {
		log.Fatal(err)
	}
	model.Service.TLS = new(tls.Config) // without -tls-cert: a self-signed localhost certificate
	if *certFile != "" {
		cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		if err != nil {
			log.Fatal(err)
		}
		model.Service.TLS.Certificates = []tls.Certificate{cert}
	}
	model.Service.Listen = &url.URL{
		Host: net.JoinHostPort(*host, strconv.Itoa(*port)),
		User: url.UserPassword(*user, *password), // not simulator.DefaultLogin: checked exactly
	}
	server := model.Service.NewServer()
	// nothing has connected yet: the handler is swapped before the first request
	server.Config.Handler = &controls{next: server.Config.Handler, sdk: server.URL}

	var dirs []string
	cleanup := func() {
		server.Close()
		model.Remove()
		for _, dir := range dirs {
			_ = os.RemoveAll(dir)
		}
	}
	if err := build(server.URL, inv, &dirs); err != nil {
		cleanup()
		log.Fatal(err)
	}

	fmt.Println(server.URL.String())
	_ = os.Stdout.Sync()

	done := make(chan os.Signal, 1)
	signal.Notify(done, syscall.SIGTERM, syscall.SIGINT)
	if *exitOnEOF {
		go func() {
			_, _ = io.Copy(ioutil.Discard, os.Stdin)
			done <- syscall.SIGTERM
		}()
	}
	<-done
	cleanup()
}

// build creates the inventory through the simulator's own SOAP API, then sets the hardware
// figures (host CPU/memory, datastore capacity) that the API cannot set, directly in the
// simulator's object registry. Nothing else talks to the server until the URL is printed.
func build(u *url.URL, inv Inventory, dirs *[]string) error {
	ctx := context.Background()
	c, err := govmomi.NewClient(ctx, u, true)
	if err != nil {
		return err
	}
	defer func() { _ = c.Logout(ctx) }()
	root := object.NewRootFolder(c.Client)

	for _, d := range inv.Datacenters {
		dc, err := root.CreateDatacenter(ctx, d.Name)
		if err != nil {
			return fmt.Errorf("datacenter %s: %w", d.Name, err)
		}
		folders, err := dc.Folders(ctx)
		if err != nil {
			return err
		}

		var hosts []*object.HostSystem
		var clusters []types.ManagedObjectReference
		for _, cl := range d.Clusters {
			cluster, err := folders.HostFolder.CreateCluster(ctx, cl.Name, types.ClusterConfigSpecEx{})
			if err != nil {
				return fmt.Errorf("cluster %s: %w", cl.Name, err)
			}
			clusters = append(clusters, cluster.Reference())
			for i, h := range cl.Hosts {
				spec := types.HostConnectSpec{HostName: fmt.Sprintf("%s-esx%d", cl.Name, i)}
				task, err := cluster.AddHost(ctx, spec, true, nil, nil)
				if err != nil {
					return err
				}
				info, err := task.WaitForResult(ctx, nil)
				if err != nil {
					return fmt.Errorf("host %s: %w", spec.HostName, err)
				}
				ref := info.Result.(types.ManagedObjectReference)
				setHardware(ref, h)
				hosts = append(hosts, object.NewHostSystem(c.Client, ref))
			}
			resummarize(cluster.Reference())
		}

		for _, ds := range d.Datastores {
			if len(hosts) == 0 {
				return fmt.Errorf("datastore %s: datacenter %s has no host to mount it", ds.Name, d.Name)
			}
			dir, err := ioutil.TempDir("", "vcsim-ds-")
			if err != nil {
				return err
			}
			*dirs = append(*dirs, dir)
			var created *object.Datastore
			var mounts []types.DatastoreHostMount
			for _, h := range hosts {
				dss, err := h.ConfigManager().DatastoreSystem(ctx)
				if err != nil {
					return err
				}
				if created, err = dss.CreateLocalDatastore(ctx, ds.Name, dir); err != nil {
					return fmt.Errorf("datastore %s: %w", ds.Name, err)
				}
				// each host's call registers a new object under the same reference, mounted on
				// that host only: the last one is kept, and gets every host's mount
				mounts = append(mounts, simulator.Map.Get(created.Reference()).(*simulator.Datastore).Host...)
			}
			setCapacity(created.Reference(), ds)
			setMounts(created.Reference(), mounts)
		}

		if len(d.Portgroups) > 0 {
			var spec types.DVSCreateSpec
			spec.ConfigSpec = &types.VMwareDVSConfigSpec{}
			cfg := spec.ConfigSpec.GetDVSConfigSpec()
			cfg.Name = d.Name + "-dvs"
			for _, h := range hosts {
				cfg.Host = append(cfg.Host, types.DistributedVirtualSwitchHostMemberConfigSpec{
					Operation: string(types.ConfigSpecOperationAdd),
					Host:      h.Reference(),
				})
			}
			task, err := folders.NetworkFolder.CreateDVS(ctx, spec)
			if err != nil {
				return err
			}
			info, err := task.WaitForResult(ctx, nil)
			if err != nil {
				return fmt.Errorf("dvs %s: %w", cfg.Name, err)
			}
			dvs := object.NewDistributedVirtualSwitch(c.Client, info.Result.(types.ManagedObjectReference))
			for _, pg := range d.Portgroups {
				spec := types.DVPortgroupConfigSpec{Name: pg, NumPorts: 128}
				if vlan, ok := d.Vlans[pg]; ok {
					spec.DefaultPortConfig = &types.VMwareDVSPortSetting{
						Vlan: &types.VmwareDistributedVirtualSwitchVlanIdSpec{VlanId: vlan},
					}
				}
				task, err := dvs.AddPortgroup(ctx, []types.DVPortgroupConfigSpec{spec})
				if err != nil {
					return err
				}
				if err := task.Wait(ctx); err != nil {
					return fmt.Errorf("port group %s: %w", pg, err)
				}
			}
			attachPortgroups(dvs.Reference(), d.Portgroups, hosts, clusters)
		}
	}
	return nil
}

// attachPortgroups lists the named port groups of a distributed switch among the networks of
// its member hosts and of their clusters (and those hosts among each port group's), as
// vCenter does: this simulator leaves them out, and openshift-install looks a failure
// domain's network up among its cluster's networks.
func attachPortgroups(dvs types.ManagedObjectReference, names []string, hosts []*object.HostSystem, clusters []types.ManagedObjectReference) {
	wanted := map[string]bool{}
	for _, name := range names {
		wanted[name] = true
	}
	var pgs, members []types.ManagedObjectReference
	for _, ref := range simulator.Map.Get(dvs).(*simulator.DistributedVirtualSwitch).Portgroup {
		if pg := simulator.Map.Get(ref).(*simulator.DistributedVirtualPortgroup); wanted[pg.Name] {
			pgs = append(pgs, ref)
		}
	}
	for _, h := range hosts {
		members = append(members, h.Reference())
		host := simulator.Map.Get(h.Reference()).(*simulator.HostSystem)
		simulator.Map.WithLock(host, func() { host.Network = append(host.Network, pgs...) })
	}
	for _, ref := range clusters {
		cluster := simulator.Map.Get(ref).(*simulator.ClusterComputeResource)
		simulator.Map.WithLock(cluster, func() { cluster.Network = append(cluster.Network, pgs...) })
	}
	for _, ref := range pgs {
		pg := simulator.Map.Get(ref).(*simulator.DistributedVirtualPortgroup)
		simulator.Map.WithLock(pg, func() { pg.Host = append(pg.Host, members...) })
	}
}

func setHardware(ref types.ManagedObjectReference, h Host) {
	host := simulator.Map.Get(ref).(*simulator.HostSystem)
	threads := h.Threads
	if threads == 0 {
		threads = h.Cores
	}
	simulator.Map.WithLock(host, func() {
		hw := host.Summary.Hardware
		hw.NumCpuPkgs, hw.NumCpuCores, hw.NumCpuThreads = 1, h.Cores, threads
		hw.CpuMhz, hw.MemorySize = h.MHz, h.MemoryGB*gib
		host.Hardware.CpuInfo.NumCpuPackages = 1
		host.Hardware.CpuInfo.NumCpuCores = h.Cores
		host.Hardware.CpuInfo.NumCpuThreads = threads
		host.Hardware.CpuInfo.Hz = int64(h.MHz) * 1000 * 1000
		host.Hardware.MemorySize = h.MemoryGB * gib
	})
}

// resummarize recomputes a cluster's summary from its hosts, as vCenter reports it:
// total CPU = Σ cores × MHz, memory = Σ bytes.
func resummarize(ref types.ManagedObjectReference) {
	cluster := simulator.Map.Get(ref).(*simulator.ClusterComputeResource)
	simulator.Map.WithLock(cluster, func() {
		s := cluster.Summary.GetComputeResourceSummary()
		s.TotalCpu, s.TotalMemory, s.NumCpuCores, s.NumCpuThreads = 0, 0, 0, 0
		s.EffectiveCpu, s.EffectiveMemory = 0, 0
		s.NumHosts, s.NumEffectiveHosts = int32(len(cluster.Host)), int32(len(cluster.Host))
		for _, href := range cluster.Host {
			hw := simulator.Map.Get(href).(*simulator.HostSystem).Summary.Hardware
			s.TotalCpu += hw.CpuMhz * int32(hw.NumCpuCores)
			s.TotalMemory += hw.MemorySize
			s.NumCpuCores += hw.NumCpuCores
			s.NumCpuThreads += hw.NumCpuThreads
		}
		s.EffectiveCpu, s.EffectiveMemory = s.TotalCpu, s.TotalMemory>>20 // effective memory is MB
	})
}

func setCapacity(ref types.ManagedObjectReference, d Datastore) {
	setSpace(simulator.Map.Get(ref).(*simulator.Datastore), d)
}

// setMounts lists every host that mounts a shared datastore, as vCenter does (Destroy_Task
// unmounts it from these).
func setMounts(ref types.ManagedObjectReference, mounts []types.DatastoreHostMount) {
	ds := simulator.Map.Get(ref).(*simulator.Datastore)
	simulator.Map.WithLock(ds, func() { ds.Host = mounts })
}

func setSpace(ds *simulator.Datastore, d Datastore) {
	free := d.CapacityGB
	if d.FreeGB != nil {
		free = *d.FreeGB
	}
	simulator.Map.WithLock(ds, func() {
		ds.Summary.Capacity, ds.Summary.FreeSpace = d.CapacityGB*gib, free*gib
		info := ds.Info.GetDatastoreInfo()
		info.FreeSpace, info.MaxFileSize = free*gib, free*gib
	})
}

// controls serves, before the simulator's own handler:
//
//   - HostSystem.DisconnectHost_Task and ReconnectHost_Task, SOAP calls of the vSphere API that
//     simulator.HostSystem does not implement. The simulator dispatches a call to the object in
//     its registry, but a wrapper type put there in place of a host would break its own
//     `.(*HostSystem)` assertions (Datastore.Destroy_Task, AddDVPortgroup_Task, ...), so these
//     two calls are answered here: a simulator Task that sets the host's connection state.
//     The session is not checked (a loopback test program).
//   - POST /vcsim/datastore?name=N&free_gb=F[&capacity_gb=C]: a datastore's free space (and
//     capacity), which no vSphere API sets (a real vCenter measures it; the simulator would
//     report the free space of the file system its directory is on).
//   - GET /vcsim/find?kind=K&path=P[&under=U]: the object of kind K (datacenter, cluster,
//     datastore, resourcepool, folder, network) that govmomi's Finder, over the SOAP API,
//     finds at the inventory path P; with U (a cluster's path; kind network), the network
//     of that cluster named P, as openshift-install looks up an install-config failure
//     domain's networks (the cluster's `network` property, each compared by name). 200 with
//     the managed object's id, 404 with the reason.
type controls struct {
	next http.Handler
	sdk  *url.URL // the simulator's SDK URL, with the credentials it accepts
}

var connectionCalls = map[string]types.HostSystemConnectionState{
	"DisconnectHost_Task": types.HostSystemConnectionStateDisconnected,
	"ReconnectHost_Task":  types.HostSystemConnectionStateConnected,
}

func (c *controls) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost && r.URL.Path == "/vcsim/datastore" {
		datastoreControl(w, r)
		return
	}
	if r.Method == http.MethodGet && r.URL.Path == "/vcsim/find" {
		c.findControl(w, r)
		return
	}
	if r.Method == http.MethodPost && r.URL.Path == "/sdk" {
		body, err := ioutil.ReadAll(r.Body)
		_ = r.Body.Close()
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.Body = ioutil.NopCloser(bytes.NewReader(body))
		if bytes.Contains(body, []byte("Host_Task")) {
			if m, err := simulator.UnmarshalBody(types.TypeFunc(), body); err == nil {
				if state, ok := connectionCalls[m.Name]; ok {
					hostConnection(w, m, state)
					return
				}
			}
		}
	}
	c.next.ServeHTTP(w, r)
}

const taskResponse = `<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" ` +
	`xmlns:xsd="http://www.w3.org/2001/XMLSchema" ` +
	`xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>` +
	`<%[1]sResponse xmlns="urn:vim25"><returnval type="Task">%[2]s</returnval>` +
	`</%[1]sResponse></soapenv:Body></soapenv:Envelope>`

// hostConnection answers DisconnectHost_Task or ReconnectHost_Task with a Task that sets the
// host's runtime.connectionState (ManagedObjectNotFound when `_this` is no host).
func hostConnection(w http.ResponseWriter, m *simulator.Method, state types.HostSystemConnectionState) {
	this := m.This
	task := simulator.CreateTask(this, m.Name, func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		host, ok := simulator.Map.Get(this).(*simulator.HostSystem)
		if !ok {
			return nil, &types.ManagedObjectNotFound{Obj: this}
		}
		simulator.Map.WithLock(host, func() {
			host.Runtime.ConnectionState = state
			if host.Summary.Runtime != nil {
				host.Summary.Runtime.ConnectionState = state
			}
		})
		return nil, nil
	})
	ref := task.Run()
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	_, _ = fmt.Fprintf(w, taskResponse, m.Name, ref.Value)
}

// datastoreControl sets the free space (and optionally the capacity) of the datastores named
// `name`, in GB. 404 when there is none.
func datastoreControl(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	name := q.Get("name")
	free, err := strconv.ParseInt(q.Get("free_gb"), 10, 64)
	if err != nil || name == "" || free < 0 {
		http.Error(w, "need name and free_gb (GB, >= 0)", http.StatusBadRequest)
		return
	}
	found := 0
	for _, e := range simulator.Map.All("Datastore") {
		ds, ok := e.(*simulator.Datastore)
		if !ok || ds.Name != name {
			continue
		}
		capacity := ds.Summary.Capacity / gib
		if c := q.Get("capacity_gb"); c != "" {
			if capacity, err = strconv.ParseInt(c, 10, 64); err != nil || capacity < free {
				http.Error(w, "capacity_gb: a number of GB, at least free_gb", http.StatusBadRequest)
				return
			}
		}
		setSpace(ds, Datastore{Name: name, CapacityGB: capacity, FreeGB: &free})
		found++
	}
	if found == 0 {
		http.Error(w, fmt.Sprintf("no datastore %q", name), http.StatusNotFound)
		return
	}
	_, _ = fmt.Fprintf(w, "%d\n", found)
}

// findControl looks an inventory path up with govmomi's Finder, through the simulator's own
// SOAP API, as openshift-install does.
func (c *controls) findControl(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	where, under := q.Get("path"), q.Get("under")
	ctx := r.Context()
	client, err := govmomi.NewClient(ctx, c.sdk, true)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer func() { _ = client.Logout(ctx) }()
	finder := find.NewFinder(client.Client, true)
	kind := q.Get("kind")
	var ref types.ManagedObjectReference
	switch {
	case under != "" && kind != "network":
		http.Error(w, "under: only with kind network", http.StatusBadRequest)
		return
	case under != "":
		ref, err = clusterNetwork(ctx, finder, under, where)
	default:
		if ref, err = findObject(ctx, finder, kind, where); err == errKind {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
	}
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		w.WriteHeader(http.StatusNotFound)
		_ = json.NewEncoder(w).Encode(map[string]string{"path": where, "error": err.Error()})
		return
	}
	_ = json.NewEncoder(w).Encode(map[string]string{"path": where, "ref": ref.Value})
}

var errKind = fmt.Errorf("kind: one of datacenter, cluster, datastore, resourcepool, folder, network")

// clusterNetwork is the network of the cluster at clusterPath named name: openshift-install's
// lookup of a failure domain's network (the cluster's networks, compared by name).
func clusterNetwork(ctx context.Context, finder *find.Finder, clusterPath, name string) (types.ManagedObjectReference, error) {
	cluster, err := finder.ClusterComputeResource(ctx, clusterPath)
	if err != nil {
		return types.ManagedObjectReference{}, err
	}
	var props mo.ClusterComputeResource
	if err := cluster.Properties(ctx, cluster.Reference(), []string{"network"}, &props); err != nil {
		return types.ManagedObjectReference{}, err
	}
	for _, net := range props.Network {
		got, err := object.NewCommon(cluster.Client(), net).ObjectName(ctx)
		if err != nil {
			return types.ManagedObjectReference{}, err
		}
		if got == name {
			return net, nil
		}
	}
	return types.ManagedObjectReference{}, fmt.Errorf("cluster %s has no network named %q", clusterPath, name)
}

// findObject is the object of a kind at an inventory path, as govmomi's Finder finds it.
func findObject(ctx context.Context, finder *find.Finder, kind, where string) (types.ManagedObjectReference, error) {
	var ref types.ManagedObjectReference
	var err error
	switch kind {
	case "datacenter":
		var o *object.Datacenter
		if o, err = finder.Datacenter(ctx, where); err == nil {
			ref = o.Reference()
		}
	case "cluster":
		var o *object.ClusterComputeResource
		if o, err = finder.ClusterComputeResource(ctx, where); err == nil {
			ref = o.Reference()
		}
	case "datastore":
		var o *object.Datastore
		if o, err = finder.Datastore(ctx, where); err == nil {
			ref = o.Reference()
		}
	case "resourcepool":
		var o *object.ResourcePool
		if o, err = finder.ResourcePool(ctx, where); err == nil {
			ref = o.Reference()
		}
	case "folder":
		var o *object.Folder
		if o, err = finder.Folder(ctx, where); err == nil {
			ref = o.Reference()
		}
	case "network":
		var o object.NetworkReference
		if o, err = finder.Network(ctx, where); err == nil {
			ref = o.Reference()
		}
	default:
		err = errKind
	}
	return ref, err
}
