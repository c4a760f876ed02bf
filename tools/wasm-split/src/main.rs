//! `doppel-wasm-split <frontend.wasm> <pkg dir> <output name>`
//!
//! Cuts the WASM cargo built into a main module and one chunk per lazy route, as
//! cargo-leptos does for `--split`: the chunks, their loader
//! (`__wasm_split.______________________.js`) and `__wasm_split_manifest.json` go into the
//! pkg dir; the main module goes next to the input as `<stem>_split.wasm`, for wasm-bindgen.
//! Prints the path of the main module.

use std::{path::PathBuf, process::ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, pkg_dir, output_name] = args.as_slice() else {
        eprintln!("usage: doppel-wasm-split <frontend.wasm> <pkg dir> <output name>");
        return ExitCode::from(2);
    };
    match split(input.into(), pkg_dir.into(), output_name) {
        Ok(main_out) => {
            println!("{}", main_out.display());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("doppel-wasm-split: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn split(
    input: PathBuf,
    pkg_dir: PathBuf,
    output_name: &str,
) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let wasm =
        std::fs::read(&input).map_err(|e| format!("cannot read {}: {e}", input.display()))?;
    let stem = input
        .file_stem()
        .ok_or_else(|| format!("{} has no file name", input.display()))?
        .to_string_lossy();
    let main_out = input.with_file_name(format!("{stem}_split.wasm"));
    // The chunks import their loader relative to the main JS file wasm-bindgen writes.
    let main_module = format!("./{output_name}.js");
    std::fs::create_dir_all(&pkg_dir)?;
    let split = wasm_split_cli_support::transform({
        let mut opts = wasm_split_cli_support::Options::new(&wasm);
        opts.output_dir = &pkg_dir;
        opts.main_out_path = &main_out;
        opts.main_module = &main_module;
        // The name cargo-leptos uses (its placeholder for content hashes); kept the same so
        // a site built either way looks alike.
        opts.link_name = "./__wasm_split.______________________.js";
        opts
    })?;
    // Sorted, so the same build writes the same file.
    let manifest: std::collections::BTreeMap<_, _> = split.prefetch_map.into_iter().collect();
    let manifest = serde_json::to_string_pretty(&manifest)?;
    std::fs::write(pkg_dir.join("__wasm_split_manifest.json"), manifest)?;
    for module in &split.split_modules {
        eprintln!("  chunk {}", module.display());
    }
    Ok(main_out)
}
