//! Compute-bound work for benchmarks and cross-engine checks:
//! `compute hash|sort|float|all|fib|deep N`.
//! Prints a checksum so every engine must agree on the result.

fn fnv_rounds(n: u64) -> u64 {
    let mut data = vec![0u8; 4096];
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for round in 0..n {
        for (i, b) in data.iter_mut().enumerate() {
            *b = (i as u64 ^ round ^ h) as u8;
        }
        for &b in &data {
            h ^= b as u64;
            h = h.wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

fn sort_rounds(n: u64) -> u64 {
    let mut x = 88172645463325252u64;
    let mut acc = 0u64;
    for _ in 0..n {
        let mut v: Vec<u64> = (0..20_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            })
            .collect();
        v.sort_unstable();
        acc = acc.wrapping_add(v[v.len() / 2]);
    }
    acc
}

fn nbody(steps: u64) -> f64 {
    // Five bodies with simple gravity, integrated with a fixed step.
    let mut pos = [[0.0f64, 0.0, 0.0], [4.84, -1.16, -0.10], [8.34, 4.12, -0.40], [12.89, -15.11, -0.22], [15.37, -25.91, 0.17]];
    let mut vel = [[0.0f64, 0.0, 0.0], [0.606, 2.81, -0.02], [-1.01, 1.82, 0.008], [1.08, 0.868, -0.01], [0.979, 0.594, -0.034]];
    let mass = [39.47, 0.037, 0.011, 0.0017, 0.002];
    let dt = 0.01;
    for _ in 0..steps {
        for i in 0..5 {
            for j in (i + 1)..5 {
                let d = [pos[i][0] - pos[j][0], pos[i][1] - pos[j][1], pos[i][2] - pos[j][2]];
                let d2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2];
                let mag = dt / (d2 * d2.sqrt());
                for k in 0..3 {
                    vel[i][k] -= d[k] * mass[j] * mag;
                    vel[j][k] += d[k] * mass[i] * mag;
                }
            }
        }
        for i in 0..5 {
            for k in 0..3 {
                pos[i][k] += dt * vel[i][k];
            }
        }
    }
    pos.iter().flatten().sum()
}

/// Recursion `n` frames deep; the innermost frame writes to stdout, a migration point.
fn deep(n: u64) -> u64 {
    if n == 0 {
        println!("bottom");
        return 1;
    }
    let below = deep(n - 1);
    std::hint::black_box(below.wrapping_mul(31).wrapping_add(n))
}

/// Naive Fibonacci: call-heavy recursion.
fn fib(n: u64) -> u64 {
    if n < 2 { n } else { fib(n - 1) + fib(n - 2) }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let what = args.get(1).map(String::as_str).unwrap_or("all");
    let n: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10);
    if what == "hash" || what == "all" {
        println!("hash {:016x}", fnv_rounds(n * 50));
    }
    if what == "sort" || what == "all" {
        println!("sort {}", sort_rounds(n));
    }
    if what == "deep" {
        println!("deep {}", deep(n));
    }
    if what == "fib" {
        println!("fib {}", fib(n));
    }
    if what == "float" || what == "all" {
        println!("float {:.9}", nbody(n * 10_000));
    }
}
