//! Reaches migration points through the ways Rust code calls: trait objects, closures handed
//! to the standard library (a sort comparator and an iterator adapter that print), a hashed
//! map seeded from `random_get`, mutual recursion, a sleep (`poll_oneoff`) and the clocks,
//! standard input read by lines, and an exit status set by `std::process::exit`. What it prints
//! depends only on its arguments and input. Usage: mixed [N], reading stdin.
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

trait Shape {
    fn area(&self) -> f64;
    fn describe(&self) -> String;
}

struct Square(f64);
struct Circle(f64);

impl Shape for Square {
    fn area(&self) -> f64 {
        self.0 * self.0
    }
    fn describe(&self) -> String {
        format!("square {}", self.0)
    }
}

impl Shape for Circle {
    fn area(&self) -> f64 {
        3.0 * self.0 * self.0
    }
    fn describe(&self) -> String {
        format!("circle {}", self.0)
    }
}

/// Ackermann's function, which recurses in both arguments; reports a few of its calls.
fn ackermann(m: u64, n: u64, reported: &mut u32) -> u64 {
    if m == 1 && n % 50 == 0 && *reported < 4 {
        *reported += 1;
        println!("ackermann passes (1, {n})");
    }
    match (m, n) {
        (0, n) => n + 1,
        (m, 0) => ackermann(m - 1, 1, reported),
        (m, n) => {
            let inner = ackermann(m, n - 1, reported);
            ackermann(m - 1, inner, reported)
        }
    }
}

fn ping(n: u32, trail: &mut Vec<u32>) -> u32 {
    trail.push(n);
    if n % 25 == 0 {
        eprintln!("ping {n}");
    }
    if n == 0 { 0 } else { 1 + pong(n - 1, trail) }
}

fn pong(n: u32, trail: &mut Vec<u32>) -> u32 {
    trail.push(n);
    if n == 0 { 0 } else { 2 + ping(n - 1, trail) }
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(40);

    let shapes: Vec<Box<dyn Shape>> = (1..=6)
        .map(|i| {
            if i % 2 == 0 {
                Box::new(Square(i as f64)) as Box<dyn Shape>
            } else {
                Box::new(Circle(i as f64 / 2.0))
            }
        })
        .collect();
    let mut total = 0.0;
    for s in &shapes {
        println!("{}: {:.2}", s.describe(), s.area());
        total += s.area();
    }
    println!("total area {total:.3}");

    let mut values: Vec<i64> = (0..n as i64).map(|i| (i * 7919) % 613 - 300).collect();
    let mut compared = 0u32;
    values.sort_by(|a, b| {
        compared += 1;
        if compared % 60 == 0 {
            eprintln!("comparison {compared}: {a} against {b}");
        }
        a.cmp(b)
    });
    assert!(values.windows(2).all(|w| w[0] <= w[1]));
    println!("sorted {n}: {:?} .. {:?}", values.first(), values.last());

    let squares: Vec<i64> = values
        .iter()
        .step_by(n.div_ceil(5).max(1))
        .map(|v| {
            println!("squaring {v}");
            v * v
        })
        .collect();
    println!("squares {squares:?}");

    let text = "one two three two one four one";
    let mut counts: HashMap<&str, u32> = HashMap::new();
    for w in text.split(' ') {
        *counts.entry(w).or_default() += 1;
    }
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort();
    println!("word counts {counts:?}");

    let mut reported = 0;
    println!("ackermann(2, {n}) = {}", ackermann(2, n as u64, &mut reported));
    let mut trail = Vec::new();
    println!("ping-pong {} over {} frames", ping(101, &mut trail), trail.len());

    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(1));
    println!("slept: {}", started.elapsed() >= Duration::from_millis(1));
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    println!("wall clock after 2020: {}", since_epoch.as_secs() > 1_577_836_800);

    let mut lines = 0;
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        lines += 1;
        println!("input {lines}: {} chars, reversed {:?}", line.len(), line.chars().rev().collect::<String>());
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{lines} input lines").unwrap();
    out.flush().unwrap();
    std::process::exit(if lines > 0 { 7 } else { 8 });
}
