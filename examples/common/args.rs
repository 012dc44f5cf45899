//! The development examples' positional arguments.

/// Argument `index` (1-based) as a `T`, or `default` when it is absent. One that does not
/// parse stops the program with a message that names it (it used to become the default
/// without a word: `attention_speed two` timed one thread).
pub fn arg<T: std::str::FromStr>(index: usize, name: &str, default: T) -> T {
    match std::env::args().nth(index) {
        None => default,
        Some(text) => text.parse().unwrap_or_else(|_| {
            eprintln!("argument {index} ({name}): cannot read {text:?}");
            std::process::exit(2)
        }),
    }
}
