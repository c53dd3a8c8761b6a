//! The `rotor` binary: everything lives in the library's `cli` module.

fn main() -> std::process::ExitCode {
    rotor::cli::main()
}
