//! `groupq`: quantize model checkpoints from the shell.

use clap::{Parser, Subcommand};
use groupq_cli::commands::{self, QuantizeOptions};
use groupq_cli::formats::{Format, Spec};
use safetensors::Dtype;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "groupq",
    version,
    about = "Group-wise integer quantization of model checkpoints, bit-compatible with GPTQ, AWQ and compressed-tensors"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Float dtypes of restored weights.
#[derive(Clone, Copy, clap::ValueEnum)]
enum FloatDtype {
    Float16,
    Bfloat16,
    Float32,
}

#[derive(Subcommand)]
enum Command {
    /// Quantize the Linear weights of a checkpoint; copy everything else bit for bit.
    Quantize {
        /// A model directory (config.json, *.safetensors, optional index) or one .safetensors file.
        input: PathBuf,
        /// The output directory (written under a temporary name, renamed when complete).
        #[arg(short, long)]
        output: PathBuf,
        /// The checkpoint format to write.
        #[arg(long, value_enum)]
        format: Format,
        /// Bits per code.
        #[arg(long, default_value_t = 4)]
        bits: u32,
        /// Elements per group along the input features.
        #[arg(long, default_value_t = 128)]
        group_size: usize,
        /// Symmetric codes (the default for gptq and compressed-tensors).
        #[arg(long, conflicts_with = "asym")]
        sym: bool,
        /// Asymmetric codes with zero points (the default, and the only choice, for awq).
        #[arg(long)]
        asym: bool,
        /// Leave matching Linear weights in float (`*` and `?` wildcards, else a substring).
        #[arg(long, value_name = "PATTERN")]
        ignore: Vec<String>,
        /// Quantize lm_head too (compressed-tensors only: the gptq and awq loaders of transformers keep it in float).
        #[arg(long)]
        quantize_lm_head: bool,
        /// Keep weights whose shape the format cannot store in float, with a warning, instead of failing.
        #[arg(long)]
        skip_indivisible: bool,
        /// Replace an existing output.
        #[arg(long)]
        force: bool,
        /// No progress bars, warnings or summary.
        #[arg(short, long)]
        quiet: bool,
        /// Write every quantized tensor's SQNR and max abs error as JSON.
        #[arg(long, value_name = "FILE.json")]
        report: Option<PathBuf>,
    },
    /// Turn a quantized checkpoint back into float weights.
    Dequantize {
        /// A quantized model directory or file.
        input: PathBuf,
        /// The output directory.
        #[arg(short, long)]
        output: PathBuf,
        /// The dtype of the restored weights (default: the config's `torch_dtype`, else the
        /// dtype of the checkpoint's other float tensors); `config.json` is updated to match.
        #[arg(long, value_enum)]
        dtype: Option<FloatDtype>,
        /// Replace an existing output.
        #[arg(long)]
        force: bool,
        /// No progress bars.
        #[arg(short, long)]
        quiet: bool,
    },
    /// List tensors, dtypes and shapes, and the detected quantization format.
    Inspect {
        /// A model directory or a .safetensors file.
        path: PathBuf,
    },
    /// Write a small random LLaMA-shaped model (for trying groupq out).
    ExampleModel {
        /// The output directory.
        output: PathBuf,
        /// Replace an existing output.
        #[arg(long)]
        force: bool,
    },
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Quantize {
            input,
            output,
            format,
            bits,
            group_size,
            sym,
            asym,
            ignore,
            quantize_lm_head,
            skip_indivisible,
            force,
            quiet,
            report,
        } => {
            let symmetric = if asym {
                false
            } else {
                sym || format != Format::Awq
            };
            let o = QuantizeOptions {
                input,
                output,
                spec: Spec {
                    format,
                    bits,
                    group_size,
                    symmetric,
                },
                ignore,
                quantize_lm_head,
                skip_indivisible,
                force,
                quiet,
                report,
            };
            let summary = commands::quantize(&o)?;
            if !o.quiet {
                commands::print_summary(&o, &summary);
                for note in o.spec.format.imp().notes(&o.spec) {
                    eprintln!("note: {note}");
                }
            }
        }
        Command::Dequantize {
            input,
            output,
            dtype,
            force,
            quiet,
        } => {
            let dtype = dtype.map(|d| match d {
                FloatDtype::Float16 => Dtype::F16,
                FloatDtype::Bfloat16 => Dtype::BF16,
                FloatDtype::Float32 => Dtype::F32,
            });
            let modules = commands::dequantize(&input, &output, dtype, force, quiet)?;
            if !quiet {
                println!("dequantized {modules} modules; wrote {}", output.display());
            }
        }
        Command::Inspect { path } => print!("{}", commands::inspect(&path)?),
        Command::ExampleModel { output, force } => {
            groupq_cli::tiny::write_example_model(&output, force)?;
            println!("wrote {}", output.display());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
