//! The rig itself: build, drive, tear down.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::clock::MonoTime;
use crate::cmd::{self, IP, SYSCTL};
use crate::error::{Result, RigError};
use crate::follow::{FollowPath, RouteEvent, RouteFollower};
use crate::frr::{BfdPeerConfig, BfdTimers, FrrBfdd};
use crate::inject::{self, Fault, Injection};
use crate::netns::{self, ProbeResult};
use crate::plan::{AddressPlan, Role, Uplink, CARRIER_APP_DEV, CARRIER_CORE_DEV};
use crate::process::NsProcess;
use crate::state::{self, RunStateFile, RUN_PREFIX};

/// How the core's route to the service address follows failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// No FRR: the route stays via car1 until the test calls [`Rig::route_core_via`].
    Manual,
    /// FRR `bfdd` in car1, car2 and core with these timers: each carrier runs BFD toward the
    /// appliance's uplink address and the core runs BFD toward each carrier; a rig thread moves
    /// the core's route to the first carrier whose two sessions are up.
    FrrBfd(BfdTimers),
}

/// How to build a rig.
#[derive(Debug, Clone)]
pub struct RigOptions {
    /// The core side's reaction to failures.
    pub upstream: Upstream,
    /// Reference monitor: FRR `bfdd` in the appliance with these timers, toward both carriers,
    /// plus a rig thread moving the appliance's default route to the first uplink whose session
    /// is up. Leave `None` when the link monitor under test runs in the appliance (both would
    /// want UDP 3784).
    pub appliance_frr: Option<BfdTimers>,
    /// Per-uplink policy routing in the appliance: `from <uplink address> lookup 101/102`, each
    /// table with a default via that uplink's gateway, behind `lookup main
    /// suppress_prefixlength 0` so connected routes still win. Lets probes sourced from an
    /// uplink's address leave by that uplink whatever the main default route says.
    pub uplink_policy_tables: bool,
    /// Where run-state directories live (default `$POP_RIG_STATE_DIR` or `/run/pop-rig`).
    pub state_root: PathBuf,
    /// Poll period of the route-follower threads.
    pub follow_poll: Duration,
}

impl Default for RigOptions {
    fn default() -> Self {
        RigOptions {
            upstream: Upstream::Manual,
            appliance_frr: None,
            uplink_policy_tables: true,
            state_root: state::state_root(),
            follow_poll: Duration::from_millis(5),
        }
    }
}

/// Timings measured while building.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BuildTimings {
    /// Namespaces, links, addresses, routes, sysctls.
    pub topology: Duration,
    /// Starting every FRR daemon until its vty answers (zero without FRR).
    pub frr_start: Duration,
}

/// The PoP in network namespaces. Dropping it tears everything down.
#[derive(Debug)]
pub struct Rig {
    run_id: String,
    names: BTreeMap<Role, String>,
    plan: AddressPlan,
    options: RigOptions,
    state: Arc<RunStateFile>,
    frr: BTreeMap<Role, FrrBfdd>,
    core_follower: Option<RouteFollower>,
    app_follower: Option<RouteFollower>,
    timings: BuildTimings,
    /// nft tables of injected faults now in place, per uplink.
    active_tables: Mutex<BTreeSet<(Uplink, &'static str)>>,
    torn_down: bool,
}

fn new_run_id() -> String {
    format!(
        "{RUN_PREFIX}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

fn net(addr: Ipv4Addr, len: u8) -> String {
    format!("{addr}/{len}")
}

impl Rig {
    /// Builds the rig: removes stale runs first, then creates namespaces, links, addresses,
    /// routes and (per options) FRR daemons. On any error, what was created is torn down.
    pub fn build(options: RigOptions) -> Result<Rig> {
        cmd::check_prerequisites()?;
        if matches!(options.upstream, Upstream::FrrBfd(_)) || options.appliance_frr.is_some() {
            cmd::require_tool(cmd::BFDD, "frr")?;
        }
        let stale = state::cleanup_stale(&options.state_root);
        for e in &stale.errors {
            eprintln!("pop-rig: stale-run cleanup: {e}");
        }
        let run_id = new_run_id();
        let state = Arc::new(RunStateFile::create(&options.state_root, &run_id)?);
        let names = Role::ALL
            .into_iter()
            .map(|r| (r, format!("{run_id}-{}", r.name())))
            .collect();
        let mut rig = Rig {
            run_id,
            names,
            plan: AddressPlan::STANDARD,
            options,
            state,
            frr: BTreeMap::new(),
            core_follower: None,
            app_follower: None,
            timings: BuildTimings::default(),
            active_tables: Mutex::new(BTreeSet::new()),
            torn_down: false,
        };
        // On error `rig` drops here and tears down whatever exists.
        let start = Instant::now();
        rig.build_topology()?;
        rig.timings.topology = start.elapsed();
        let start = Instant::now();
        rig.start_frr()?;
        rig.timings.frr_start = start.elapsed();
        Ok(rig)
    }

    fn build_topology(&mut self) -> Result<()> {
        for role in Role::ALL {
            let ns = self.ns(role).to_owned();
            // Recorded before creation: a kill between the two still leaves it listed.
            let recorded = ns.clone();
            self.state.update(|s| s.namespaces.push(recorded))?;
            cmd::run(IP, &["netns", "add", &ns])?;
            cmd::run_in(&ns, SYSCTL, &sysctls(role))?;
        }
        let p = self.plan;
        let (u1, u2) = (p.uplink1, p.uplink2);
        let app = self.ns(Role::App).to_owned();
        let car1 = self.ns(Role::Car1).to_owned();
        let car2 = self.ns(Role::Car2).to_owned();
        let core = self.ns(Role::Core).to_owned();

        // Links are created directly inside the namespaces: nothing ever appears in the root one.
        let mut app_cmds = vec![
            "link set lo up".to_owned(),
            format!("link add up1 type veth peer name {CARRIER_APP_DEV} netns {car1}"),
            format!("link add up2 type veth peer name {CARRIER_APP_DEV} netns {car2}"),
            format!("address add {}/32 dev lo", p.service),
            format!("address add {} dev up1", net(u1.app, u1.prefix_len)),
            format!("address add {} dev up2", net(u2.app, u2.prefix_len)),
            "link set up1 up".to_owned(),
            "link set up2 up".to_owned(),
        ];
        cmd::ip_batch(&app, &app_cmds)?;
        for (uplink, car, core_dev) in [(Uplink::One, &car1, "car1"), (Uplink::Two, &car2, "car2")]
        {
            let a = p.uplink(uplink);
            cmd::ip_batch(
                car,
                &[
                    "link set lo up".to_owned(),
                    format!(
                        "link add {CARRIER_CORE_DEV} type veth peer name {core_dev} netns {core}"
                    ),
                    format!(
                        "address add {} dev {CARRIER_APP_DEV}",
                        net(a.gateway, a.prefix_len)
                    ),
                    format!(
                        "address add {} dev {CARRIER_CORE_DEV}",
                        net(a.carrier_core_side, AddressPlan::CORE_LINK_PREFIX_LEN)
                    ),
                    format!("link set {CARRIER_APP_DEV} up"),
                    format!("link set {CARRIER_CORE_DEV} up"),
                    format!(
                        "route add {} via {} dev {CARRIER_CORE_DEV}",
                        AddressPlan::CORE_HOSTS,
                        a.core_side
                    ),
                ],
            )?;
        }
        cmd::ip_batch(
            &core,
            &[
                "link set lo up".to_owned(),
                format!("address add {}/32 dev lo", p.core_media),
                format!("address add {}/32 dev lo", p.core_control),
                format!(
                    "address add {} dev car1",
                    net(u1.core_side, AddressPlan::CORE_LINK_PREFIX_LEN)
                ),
                format!(
                    "address add {} dev car2",
                    net(u2.core_side, AddressPlan::CORE_LINK_PREFIX_LEN)
                ),
                "link set car1 up".to_owned(),
                "link set car2 up".to_owned(),
                // Each uplink subnet via its own carrier, as upstream routers learn them.
                format!(
                    "route add {} via {} dev car1",
                    net(p.uplink_net(Uplink::One), u1.prefix_len),
                    u1.carrier_core_side
                ),
                format!(
                    "route add {} via {} dev car2",
                    net(p.uplink_net(Uplink::Two), u2.prefix_len),
                    u2.carrier_core_side
                ),
                format!(
                    "route add {}/32 via {} dev car1 src {}",
                    p.service, u1.carrier_core_side, p.core_media
                ),
            ],
        )?;
        for uplink in Uplink::ALL {
            cmd::ip_batch(
                self.ns(uplink.carrier()),
                &self.carrier_service_route(uplink),
            )?;
        }
        // Initial appliance routing: default via the primary, sourced from the service address
        // so traffic not bound to an address survives a switch of uplink.
        app_cmds = vec![format!(
            "route add default via {} dev up1 src {}",
            u1.gateway, p.service
        )];
        if self.options.uplink_policy_tables {
            app_cmds.push("rule add priority 90 lookup main suppress_prefixlength 0".to_owned());
            for uplink in Uplink::ALL {
                let a = p.uplink(uplink);
                let table = uplink.policy_table();
                app_cmds.push(format!(
                    "route add default via {} dev {} table {table}",
                    a.gateway,
                    uplink.app_dev()
                ));
                app_cmds.push(format!(
                    "rule add priority 100 from {} lookup {table}",
                    a.app
                ));
            }
        }
        cmd::ip_batch(&app, &app_cmds)
    }

    fn carrier_service_route(&self, uplink: Uplink) -> Vec<String> {
        let a = self.plan.uplink(uplink);
        vec![format!(
            "route replace {}/32 via {} dev {CARRIER_APP_DEV}",
            self.plan.service, a.app
        )]
    }

    fn start_frr(&mut self) -> Result<()> {
        let p = self.plan;
        let peer = |peer, local, timers| BfdPeerConfig {
            peer,
            local,
            timers,
            passive: false,
        };
        if let Upstream::FrrBfd(t) = self.options.upstream {
            for uplink in Uplink::ALL {
                let a = p.uplink(uplink);
                let peers = vec![
                    peer(a.app, a.gateway, t),
                    peer(a.core_side, a.carrier_core_side, t),
                ];
                self.start_bfdd(uplink.carrier(), peers)?;
            }
            let peers = Uplink::ALL
                .into_iter()
                .map(|u| {
                    let a = p.uplink(u);
                    peer(a.carrier_core_side, a.core_side, t)
                })
                .collect();
            self.start_bfdd(Role::Core, peers)?;
            let paths = Uplink::ALL
                .into_iter()
                .map(|u| {
                    let a = p.uplink(u);
                    FollowPath {
                        label: u.carrier().name().to_owned(),
                        via: a.carrier_core_side,
                        dev: u.core_dev().to_owned(),
                        src: Some(p.core_media),
                        sessions: vec![
                            (self.frr_vty(u.carrier()), a.app),
                            (self.frr_vty(Role::Core), a.carrier_core_side),
                        ],
                    }
                })
                .collect();
            self.core_follower = Some(RouteFollower::start(
                self.ns(Role::Core),
                &format!("{}/32", p.service),
                paths,
                Role::Car1.name(),
                self.options.follow_poll,
            )?);
        }
        if let Some(t) = self.options.appliance_frr {
            let peers = Uplink::ALL
                .into_iter()
                .map(|u| {
                    let a = p.uplink(u);
                    peer(a.gateway, a.app, t)
                })
                .collect();
            self.start_bfdd(Role::App, peers)?;
            let paths = Uplink::ALL
                .into_iter()
                .map(|u| {
                    let a = p.uplink(u);
                    FollowPath {
                        label: u.app_dev().to_owned(),
                        via: a.gateway,
                        dev: u.app_dev().to_owned(),
                        src: Some(p.service),
                        sessions: vec![(self.frr_vty(Role::App), a.gateway)],
                    }
                })
                .collect();
            self.app_follower = Some(RouteFollower::start(
                self.ns(Role::App),
                "default",
                paths,
                Uplink::One.app_dev(),
                self.options.follow_poll,
            )?);
        }
        Ok(())
    }

    fn frr_vty(&self, role: Role) -> PathBuf {
        self.frr
            .get(&role)
            .map(FrrBfdd::vty_path)
            .unwrap_or_default()
    }

    fn start_bfdd(&mut self, role: Role, peers: Vec<BfdPeerConfig>) -> Result<()> {
        let dir = self.state.dir().join("frr").join(role.name());
        let bfdd = FrrBfdd::start(self.state.clone(), self.ns(role), role.name(), dir, peers)?;
        self.frr.insert(role, bfdd);
        Ok(())
    }

    /// This run's id (`poprig-<pid>-<hex>`), the prefix of every namespace name.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The namespace name of `role`.
    pub fn ns(&self, role: Role) -> &str {
        self.names
            .get(&role)
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// The address plan.
    pub fn plan(&self) -> &AddressPlan {
        &self.plan
    }

    /// The run directory (state file, FRR configs, sockets and logs).
    pub fn run_dir(&self) -> &Path {
        self.state.dir()
    }

    /// Build timings.
    pub fn timings(&self) -> BuildTimings {
        self.timings
    }

    /// The FRR `bfdd` running in `role`, if any.
    pub fn frr(&self, role: Role) -> Option<&FrrBfdd> {
        self.frr.get(&role)
    }

    /// Route changes the core follower made ([`Upstream::FrrBfd`] only).
    pub fn core_route_events(&self) -> Vec<RouteEvent> {
        self.core_follower
            .as_ref()
            .map(RouteFollower::events)
            .unwrap_or_default()
    }

    /// Route changes the appliance's reference follower made (`appliance_frr` only).
    pub fn app_route_events(&self) -> Vec<RouteEvent> {
        self.app_follower
            .as_ref()
            .map(RouteFollower::events)
            .unwrap_or_default()
    }

    /// Errors the follower threads met (they keep going after each).
    pub fn follower_errors(&self) -> Vec<String> {
        let mut all = Vec::new();
        for f in [&self.core_follower, &self.app_follower]
            .into_iter()
            .flatten()
        {
            all.extend(f.errors());
        }
        all
    }

    /// Runs `program args` in `role`'s namespace and returns its stdout.
    pub fn exec(&self, role: Role, program: &str, args: &[&str]) -> Result<String> {
        cmd::run_in(self.ns(role), program, args)
    }

    /// `ip -n <ns> args`: the quick way to inspect or change a namespace's network.
    pub fn ip(&self, role: Role, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.ns(role)];
        full.extend_from_slice(args);
        cmd::run(IP, &full)
    }

    /// Starts a long-lived process in `role`'s namespace; it is killed by PID when the returned
    /// guard drops (or by `pop-rig cleanup` if this process is killed). Output goes to
    /// `<run dir>/<log_name>.log`.
    pub fn spawn(
        &self,
        role: Role,
        program: &str,
        args: &[&str],
        log_name: &str,
    ) -> Result<NsProcess> {
        let log = self.state.dir().join(format!("{log_name}.log"));
        NsProcess::spawn(
            self.state.clone(),
            self.ns(role),
            program,
            args,
            &format!("{log_name} in {role}"),
            &log,
        )
    }

    /// Runs `f` on a thread inside `role`'s namespace (sockets it opens live there).
    pub fn in_ns<T, F>(&self, role: Role, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        netns::in_namespace(self.ns(role), f)
    }

    /// A UDP socket in `role`'s namespace bound to `addr:port` (port 0: any).
    pub fn udp_socket(&self, role: Role, addr: Ipv4Addr, port: u16) -> Result<UdpSocket> {
        netns::udp_socket_in(self.ns(role), SocketAddr::V4(SocketAddrV4::new(addr, port)))
    }

    /// Sends `count` datagrams from `from` (role, source address) to `to` (role, address), 1 ms
    /// apart, and counts arrivals within 300 ms of the last send. One-way: tests exactly the
    /// forward path of that direction.
    pub fn probe(
        &self,
        from: (Role, Ipv4Addr),
        to: (Role, Ipv4Addr),
        count: u32,
    ) -> Result<ProbeResult> {
        let tx = self.udp_socket(from.0, from.1, 0)?;
        let rx = self.udp_socket(to.0, to.1, 0)?;
        netns::probe(
            &tx,
            &rx,
            count,
            Duration::from_millis(1),
            Duration::from_millis(300),
        )
    }

    /// Moves the core's route to the service address to `uplink`'s carrier
    /// ([`Upstream::Manual`] only: with FRR the follower owns that route).
    pub fn route_core_via(&self, uplink: Uplink) -> Result<MonoTime> {
        if self.core_follower.is_some() {
            return Err(RigError::Usage(
                "the core route follows BFD in this rig (Upstream::FrrBfd); build with Upstream::Manual to steer it by hand".to_owned(),
            ));
        }
        let a = self.plan.uplink(uplink);
        self.ip(
            Role::Core,
            &[
                "route",
                "replace",
                &format!("{}/32", self.plan.service),
                "via",
                &a.carrier_core_side.to_string(),
                "dev",
                uplink.core_dev(),
                "src",
                &self.plan.core_media.to_string(),
            ],
        )?;
        Ok(MonoTime::now())
    }

    /// Moves the appliance's default route to `uplink` (what the link monitor does; for tests
    /// of the rig and of the core direction alone).
    pub fn route_app_via(&self, uplink: Uplink) -> Result<MonoTime> {
        if self.app_follower.is_some() {
            return Err(RigError::Usage(
                "the appliance route follows FRR BFD in this rig (appliance_frr is set)".to_owned(),
            ));
        }
        let a = self.plan.uplink(uplink);
        self.ip(
            Role::App,
            &[
                "route",
                "replace",
                "default",
                "via",
                &a.gateway.to_string(),
                "dev",
                uplink.app_dev(),
                "src",
                &self.plan.service.to_string(),
            ],
        )?;
        Ok(MonoTime::now())
    }

    /// Injects `fault`; returns when it is in effect.
    pub fn inject(&self, fault: Fault) -> Result<Injection> {
        let started = MonoTime::now();
        match fault {
            Fault::CarrierLoss(u) => self.set_carrier_port(u, false)?,
            Fault::BothUplinksDown => {
                self.set_carrier_port(Uplink::One, false)?;
                self.set_carrier_port(Uplink::Two, false)?;
            }
            Fault::Blackhole(u) | Fault::PastGateway(u) | Fault::Loss { uplink: u, .. } => {
                if let Fault::Loss { percent, .. } = fault {
                    inject::check_percent(percent)?;
                }
                if let Some((table, dev, percent)) = inject::table_and_dev(fault) {
                    let key = (u, table);
                    let mut active = self.active_tables.lock().unwrap_or_else(|p| p.into_inner());
                    // Creating a table takes ~5 ms; deleting one waits for an RCU grace period
                    // (~15 ms). So a fresh fault only creates; a repeated one replaces in one
                    // transaction.
                    let mut script = String::new();
                    if active.contains(&key) {
                        script += &inject::remove_table_script(table);
                    }
                    script += &inject::drop_table(table, dev, percent);
                    inject::nft_apply(self.ns(u.carrier()), &script)?;
                    active.insert(key);
                }
            }
        }
        Ok(Injection {
            fault,
            started,
            effective: MonoTime::now(),
        })
    }

    /// Undoes `fault`; returns when the recovery is in effect.
    pub fn recover(&self, fault: Fault) -> Result<Injection> {
        let started = MonoTime::now();
        match fault {
            Fault::CarrierLoss(u) => self.set_carrier_port(u, true)?,
            Fault::BothUplinksDown => {
                self.set_carrier_port(Uplink::One, true)?;
                self.set_carrier_port(Uplink::Two, true)?;
            }
            Fault::Blackhole(u) | Fault::PastGateway(u) | Fault::Loss { uplink: u, .. } => {
                if let Some((table, _, _)) = inject::table_and_dev(fault) {
                    let mut active = self.active_tables.lock().unwrap_or_else(|p| p.into_inner());
                    inject::nft_apply(self.ns(u.carrier()), &inject::remove_table_script(table))?;
                    active.remove(&(u, table));
                }
            }
        }
        Ok(Injection {
            fault,
            started,
            effective: MonoTime::now(),
        })
    }

    /// Undoes every fault on both uplinks; returns when done.
    pub fn recover_all(&self) -> Result<MonoTime> {
        for u in Uplink::ALL {
            let script: String = inject::ALL_TABLES
                .iter()
                .map(|t| inject::remove_table_script(t))
                .collect();
            let mut active = self.active_tables.lock().unwrap_or_else(|p| p.into_inner());
            inject::nft_apply(self.ns(u.carrier()), &script)?;
            active.retain(|(uplink, _)| *uplink != u);
            drop(active);
            self.set_carrier_port(u, true)?;
        }
        Ok(MonoTime::now())
    }

    fn set_carrier_port(&self, uplink: Uplink, up: bool) -> Result<()> {
        let state = if up { "up" } else { "down" };
        let mut cmds = vec![format!("link set {CARRIER_APP_DEV} {state}")];
        if up {
            // An admin-down port loses its routes; bring the carrier's route back with it.
            cmds.extend(self.carrier_service_route(uplink));
        }
        cmd::ip_batch(self.ns(uplink.carrier()), &cmds)
    }

    /// Tears everything down now, reporting problems (dropping the rig does the same and prints
    /// them).
    pub fn teardown(mut self) -> Result<()> {
        self.teardown_inner()
    }

    fn teardown_inner(&mut self) -> Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        if let Some(f) = self.core_follower.as_mut() {
            f.stop();
        }
        if let Some(f) = self.app_follower.as_mut() {
            f.stop();
        }
        // bfdd guards kill their processes by pid as they drop.
        self.frr.clear();
        let snapshot = self.state.snapshot();
        let errors = state::teardown(&snapshot);
        if errors.is_empty() {
            let dir = self.state.dir().to_owned();
            std::fs::remove_dir_all(&dir)
                .map_err(|e| RigError::io(format!("removing {}", dir.display()), e))
        } else {
            let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
            Err(RigError::Usage(format!(
                "teardown of {} incomplete (state kept for `pop-rig cleanup`): {}",
                self.run_id,
                list.join("; ")
            )))
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Err(e) = self.teardown_inner() {
            eprintln!("pop-rig: {e}");
        }
    }
}

/// Kernel settings per role, applied before any interface exists so `default` reaches all.
fn sysctls(role: Role) -> Vec<&'static str> {
    let mut s = vec!["-q", "-w"];
    // The effective rp_filter is max(all, interface): keep `all` at 0 and choose per interface
    // through `default`.
    s.push("net.ipv4.conf.all.rp_filter=0");
    match role {
        Role::App => s.extend([
            // Loose: while the core still routes via the old carrier, return traffic arrives on
            // the other uplink than our default route; strict would drop it mid-failover.
            "net.ipv4.conf.default.rp_filter=2",
            // ARP requests sourced from the uplink's own address: a carrier with strict rp_filter
            // drops ARP sourced from the service address (DESIGN §6: ~1 s lost on failover).
            "net.ipv4.conf.all.arp_announce=2",
            "net.ipv4.conf.default.arp_announce=2",
            // Carrier loss removes routes via that uplink from use at once.
            "net.ipv4.conf.all.ignore_routes_with_linkdown=1",
            "net.ipv4.conf.default.ignore_routes_with_linkdown=1",
            "net.ipv4.ip_forward=0",
        ]),
        Role::Car1 | Role::Car2 => s.extend([
            // Strict (BCP 38) as carriers do on customer ports: the appliance must source from
            // addresses routed to it over that very uplink.
            "net.ipv4.conf.default.rp_filter=1",
            "net.ipv4.ip_forward=1",
        ]),
        Role::Core => s.extend([
            // Loose: the appliance's packets arrive via either carrier whatever our route says.
            "net.ipv4.conf.default.rp_filter=2",
            "net.ipv4.ip_forward=0",
        ]),
    }
    s
}
