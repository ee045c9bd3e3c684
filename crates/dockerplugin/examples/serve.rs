//! Serves the plugin until SIGTERM or SIGINT:
//! `serve [SOCKET] [overlay2|aufs|vfs|auto]`, by default
//! `/run/docker/plugins/plies.sock` and `auto`.

use plies_dockerplugin::{Config, DEFAULT_SOCKET, DriverChoice, Server};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let socket = args.next().unwrap_or_else(|| DEFAULT_SOCKET.to_owned());
    let driver: DriverChoice = args.next().as_deref().unwrap_or("auto").parse()?;
    let server = Server::bind(Config::new(socket).with_driver(driver))?;
    eprintln!("serving {} on {}", driver, server.socket().display());
    server.run_until_signal()?;
    Ok(())
}
