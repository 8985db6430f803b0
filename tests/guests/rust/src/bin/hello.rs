//! The demo guest: greets, shows its arguments and environment, writes and reads back a file in
//! its sandbox, and exits with the status given as `--exit N`.
use std::io::{Read, Write};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    println!("hello from a WASI guest, running on tabi");
    println!("args: {:?}", &args[1..]);
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    env.sort();
    for (k, v) in env {
        println!("env: {k}={v}");
    }
    if std::path::Path::new("/sandbox").exists() {
        let path = "/sandbox/greeting.txt";
        std::fs::File::create(path)
            .and_then(|mut f| f.write_all(b"written inside the sandbox\n"))
            .expect("write greeting");
        let mut text = String::new();
        std::fs::File::open(path).and_then(|mut f| f.read_to_string(&mut text)).expect("read greeting");
        print!("file: {text}");
    }
    eprintln!("this line goes to stderr");
    if let Some(pos) = args.iter().position(|a| a == "--exit") {
        let code: i32 = args[pos + 1].parse().expect("exit status");
        std::process::exit(code);
    }
    if args.iter().any(|a| a == "--trap") {
        // An unreachable instruction: the engine must stop the guest with a trap.
        std::process::abort();
    }
}
