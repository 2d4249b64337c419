//! The `groupq` command line: argument parsing and dispatch, shared by the
//! binary and the Python package's console script.

use crate::commands::{self, QuantizeOptions};
use crate::formats::{Format, Spec};
use clap::{Parser, Subcommand};
use safetensors::Dtype;
use std::ffi::OsString;
use std::path::PathBuf;

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

/// `--format`: a safetensors checkpoint format, or GGUF.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum FormatArg {
    /// compressed-tensors `pack-quantized` (vLLM, SGLang, transformers).
    CompressedTensors,
    /// GPTQ, `checkpoint_format: gptq` (GPTQModel, AutoGPTQ, vLLM, exllama, transformers).
    Gptq,
    /// AWQ GEMM (transformers, AutoAWQ, vLLM): 4-bit with zero points.
    Awq,
    /// GGUF (llama.cpp, ollama, LM Studio): re-quantize an F32/F16/BF16 GGUF as llama-quantize does (`--type`).
    Gguf,
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
        format: FormatArg,
        /// GGUF only: llama-quantize's type name (Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K_S Q3_K_M Q3_K_L
        /// Q4_K_S Q4_K_M Q5_K_S Q5_K_M Q6_K IQ4_NL IQ4_XS F16 BF16 F32; Q2_K_S with --imatrix),
        /// case-insensitive.
        #[arg(long = "type", value_name = "TYPE")]
        gguf_type: Option<String>,
        /// With --format gguf: llama-imatrix's importance matrix (GGUF or the
        /// legacy .dat), as llama-quantize's --imatrix. Needed by Q2_K_S.
        #[arg(long, value_name = "FILE")]
        imatrix: Option<PathBuf>,
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
        /// A quantized model directory or file (safetensors, or a GGUF file).
        input: PathBuf,
        /// The output directory.
        #[arg(short, long)]
        output: PathBuf,
        /// The dtype of the restored weights (default: the config's `torch_dtype`, else the
        /// dtype of the checkpoint's other float tensors); `config.json` is updated to match.
        /// A GGUF input is restored to F16 unless this says otherwise.
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
        /// A model directory, a .safetensors file or a .gguf file.
        path: PathBuf,
    },
    /// Write a small random LLaMA-shaped model (for trying groupq out).
    ExampleModel {
        /// The output directory (a file with --gguf).
        output: PathBuf,
        /// Replace an existing output.
        #[arg(long)]
        force: bool,
        /// Write one of the small GGUF test models instead (f16-gqa4, bf16-tied, f32-narrow).
        #[arg(long, value_name = "NAME")]
        gguf: Option<String>,
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
            gguf_type,
            imatrix,
        } => {
            let input_is_gguf = crate::gguf_job::is_gguf(&input);
            let format = match format {
                FormatArg::Gguf => {
                    let Some(name) = gguf_type else {
                        anyhow::bail!("--format gguf needs --type (e.g. --type Q4_K_M)");
                    };
                    if !input_is_gguf {
                        anyhow::bail!(
                            "{}: --format gguf re-quantizes a GGUF file (F32, F16 or BF16); convert a Hugging Face checkpoint to GGUF first with llama.cpp's convert_hf_to_gguf.py (--outtype f16)",
                            input.display()
                        );
                    }
                    let o = crate::gguf_job::GgufOptions {
                        input,
                        output,
                        ftype: crate::llama_mix::Ftype::from_name(&name)?,
                        force,
                        quiet,
                        report,
                        imatrix,
                    };
                    let summary = crate::gguf_job::quantize_gguf(&o)?;
                    if !quiet {
                        crate::gguf_job::print_summary(&o, &summary);
                    }
                    return Ok(());
                }
                FormatArg::CompressedTensors => Format::CompressedTensors,
                FormatArg::Gptq => Format::Gptq,
                FormatArg::Awq => Format::Awq,
            };
            if gguf_type.is_some() {
                anyhow::bail!(
                    "--type is for --format gguf; the {} format takes --bits and --group-size",
                    format.name()
                );
            }
            if imatrix.is_some() {
                anyhow::bail!(
                    "--imatrix is for --format gguf; the {} format does not use an importance matrix",
                    format.name()
                );
            }
            if input_is_gguf {
                anyhow::bail!(
                    "{} is a GGUF file: groupq writes GGUF from GGUF (--format gguf --type ...); the {} format needs a safetensors checkpoint",
                    input.display(),
                    format.name()
                );
            }
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
            if crate::gguf_job::is_gguf(&input) {
                let to = match dtype {
                    Some(FloatDtype::Float32) => crate::gguf::GgmlDtype::F32,
                    Some(FloatDtype::Bfloat16) => crate::gguf::GgmlDtype::BF16,
                    _ => crate::gguf::GgmlDtype::F16,
                };
                let n = crate::gguf_job::dequantize_gguf(&input, &output, to, force, quiet)?;
                if !quiet {
                    println!(
                        "dequantized {n} tensors to {to}; wrote {}",
                        output.display()
                    );
                }
                return Ok(());
            }
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
        Command::Inspect { path } if crate::gguf_job::is_gguf(&path) => {
            print!("{}", crate::gguf_job::inspect_gguf(&path)?)
        }
        Command::Inspect { path } => print!("{}", commands::inspect(&path)?),
        Command::ExampleModel {
            output,
            force,
            gguf: Some(name),
        } => {
            if output.exists() && !force {
                anyhow::bail!(
                    "{} already exists (use --force to replace it)",
                    output.display()
                );
            }
            crate::tiny_gguf::model(&name)?.write(&output)?;
            println!("wrote {}", output.display());
        }
        Command::ExampleModel {
            output,
            force,
            gguf: None,
        } => {
            crate::tiny::write_example_model(&output, force)?;
            println!("wrote {}", output.display());
        }
    }
    Ok(())
}

/// Runs the command line `args` (the program name first) and returns the
/// process exit status: 0 on success, 1 on an error (printed to stderr), 2
/// for a usage error, 0 for `--help`/`--version`. Installs the signal
/// handlers that remove a partial output on SIGINT/SIGTERM/SIGHUP.
pub fn main_with_args<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    crate::staging::install_signal_cleanup();
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}
