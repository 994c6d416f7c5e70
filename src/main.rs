fn main() -> std::process::ExitCode {
    wmap::cli::main()
}
