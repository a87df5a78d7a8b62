// Command vcsim serves govmomi's vCenter simulator (VPX model) with an inventory read from a
// JSON file, for the vCenter adapter tests. It prints the SDK URL, with credentials, on stdout
// once the inventory is built, and exits on SIGTERM/SIGINT (or, with -exit-on-eof, when stdin
// closes, so that a simulator never outlives the test run that started it).
//
// Build offline against Debian's golang-github-vmware-govmomi-dev:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o vcsim ./tests/vcsim
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"io/ioutil"
	"log"
	"net"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
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
	model.Service.TLS = new(tls.Config) // self-signed localhost certificate
	model.Service.Listen = &url.URL{
		Host: net.JoinHostPort(*host, strconv.Itoa(*port)),
		User: url.UserPassword(*user, *password), // not simulator.DefaultLogin: checked exactly
	}
	server := model.Service.NewServer()

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
		for _, cl := range d.Clusters {
			cluster, err := folders.HostFolder.CreateCluster(ctx, cl.Name, types.ClusterConfigSpecEx{})
			if err != nil {
				return fmt.Errorf("cluster %s: %w", cl.Name, err)
			}
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
			for _, h := range hosts {
				dss, err := h.ConfigManager().DatastoreSystem(ctx)
				if err != nil {
					return err
				}
				if created, err = dss.CreateLocalDatastore(ctx, ds.Name, dir); err != nil {
					return fmt.Errorf("datastore %s: %w", ds.Name, err)
				}
			}
			setCapacity(created.Reference(), ds)
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
		}
	}
	return nil
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
	ds := simulator.Map.Get(ref).(*simulator.Datastore)
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
