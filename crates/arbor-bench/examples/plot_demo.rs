fn main() {
    let path = std::path::Path::new(&std::env::args().nth(1).unwrap()).to_path_buf();
    let runs = arbor_bench::report::load_runs(&path).unwrap();
    println!("{}", arbor_bench::report::runs_table(&runs));
    println!(
        "{}",
        arbor_bench::report::comparison_table(&runs, "llama-cpp-python").unwrap()
    );
    arbor_bench::plot::draw(
        &runs,
        "arbor vs llama-cpp-python: SmolLM2-135M Q4_1, CPU",
        std::path::Path::new("/tmp/demo.png"),
    )
    .unwrap();
}
