//! `berth-runtime`: Berth's OCI runtime command line and container init helper.

fn main() {
    berth_agent::runtime::init::maybe_run_init();
}
