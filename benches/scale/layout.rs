//! The shape of the scale benchmark: how many pods in how many registrations, and the names,
//! namespaces and addresses they get. Registration `r` lives in namespace `scale-{r % NS}`,
//! selects `app=r{r}` and owns pods `r{r}-p0..`; pod number `i` (over all pods) gets a distinct
//! address in 127.10.0.0/15 and up (loopback, never dialed).

use anyhow::Result;

/// At most this many namespaces; registrations are spread over them round-robin.
pub const NAMESPACES: usize = 10;
/// Largest size accepted (addresses and the time budget).
pub const MAX_PODS: usize = 100_000;
/// The port every registration publishes.
pub const PORT: i32 = 50051;
/// Hosts used per /24 (.1 to .250).
const HOSTS: usize = 250;

/// Pods × registrations, each registration selecting `pods / registrations` pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    pub pods: usize,
    pub registrations: usize,
}

impl Size {
    /// Parses `PODSxREGISTRATIONS`, e.g. `10000x1000`.
    pub fn parse(text: &str) -> Result<Size> {
        let bad = || {
            anyhow::anyhow!(
                "REGISTRAR_BENCH_SCALE={text:?}: expected PODSxREGISTRATIONS (e.g. 10000x1000), \
                 registrations >= 1 dividing pods, pods <= {MAX_PODS}"
            )
        };
        let (pods, regs) = text.trim().split_once('x').ok_or_else(bad)?;
        let size = Size {
            pods: pods.trim().parse().map_err(|_| bad())?,
            registrations: regs.trim().parse().map_err(|_| bad())?,
        };
        let ok = size.registrations >= 1
            && size.pods >= size.registrations
            && size.pods.is_multiple_of(size.registrations)
            && size.pods <= MAX_PODS;
        if ok { Ok(size) } else { Err(bad()) }
    }

    /// Parses a comma-separated list of sizes, e.g. `10000x1000,100000x10000`.
    pub fn parse_list(text: &str) -> Result<Vec<Size>> {
        let sizes = text
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(Size::parse)
            .collect::<Result<Vec<_>>>()?;
        anyhow::ensure!(!sizes.is_empty(), "REGISTRAR_BENCH_SCALE={text:?}: no size");
        Ok(sizes)
    }

    /// Pods selected by each registration.
    pub fn per_registration(&self) -> usize {
        self.pods / self.registrations
    }

    /// Namespaces used.
    pub fn namespaces(&self) -> usize {
        self.registrations.min(NAMESPACES)
    }

    /// Every pod: (registration, index within it, global pod number).
    pub fn pods(&self) -> impl Iterator<Item = Pod> + use<> {
        let per = self.per_registration();
        (0..self.pods).map(move |i| Pod {
            registration: i / per,
            index: i % per,
            number: i,
        })
    }
}

/// One pod of the layout.
#[derive(Clone, Copy, Debug)]
pub struct Pod {
    pub registration: usize,
    pub index: usize,
    pub number: usize,
}

impl Pod {
    pub fn name(&self) -> String {
        format!("r{}-p{}", self.registration, self.index)
    }

    /// A distinct loopback address: 127.(10 + n / 64000).(n / 250 % 256).(n % 250 + 1).
    pub fn ip(&self) -> String {
        let n = self.number;
        let per_octet = HOSTS * 256;
        format!(
            "127.{}.{}.{}",
            10 + n / per_octet,
            (n / HOSTS) % 256,
            n % HOSTS + 1
        )
    }
}

/// The namespace of registration `r`.
pub fn namespace(size: Size, r: usize) -> String {
    format!("scale-{}", r % size.namespaces())
}

/// The name (and `app` label value) of registration `r`.
pub fn registration(r: usize) -> String {
    format!("r{r}")
}
