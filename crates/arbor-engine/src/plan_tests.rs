//! The planner against the published DeepSeek-R1-Distill configurations
//! (tests/fixtures/models.json), published parameter counts and GGUF file sizes.

use super::*;

const MIB: u64 = 1 << 20;
const GIB: f64 = (1u64 << 30) as f64;
/// What `nvidia-smi` reports for an H100 80GB (SXM, HBM3).
const H100_80GB: u64 = 81_559 * MIB;
/// What `nvidia-smi` reports for an H200 (141 GB HBM3e).
const H200: u64 = 143_771 * MIB;
/// A 12 GB consumer card (RTX 3060/4070 class).
const CARD_12GB: u64 = 12_288 * MIB;

fn config(name: &str) -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/models.json"
    );
    let models: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    models["models"][format!("deepseek-ai/DeepSeek-R1-Distill-{name}")].clone()
}

fn shape(name: &str) -> ModelShape {
    ModelShape::from_hf_config(&config(name)).unwrap()
}

fn request(name: &str, weights: WeightFormat, device: u64, budget: KvBudget) -> PlanRequest {
    PlanRequest {
        shape: shape(name),
        weights,
        kv_dtype_bytes: 2,
        device_memory_bytes: device,
        kv_budget: budget,
        page_size: 16,
        max_batched_tokens: 8192,
        max_running_requests: 256,
    }
}

const BF16: WeightFormat = WeightFormat::Dense { bytes_per_param: 2 };

fn gib(bytes: u64) -> f64 {
    bytes as f64 / GIB
}

fn assert_near(actual: f64, expected: f64, rel: f64, what: &str) {
    assert!(
        (actual - expected).abs() <= rel * expected,
        "{what}: {actual} is not within {rel} of {expected}"
    );
}

#[test]
fn shapes_are_read_from_every_published_config() {
    let qwen_32b = shape("Qwen-32B");
    assert_eq!(
        qwen_32b,
        ModelShape {
            n_layers: 64,
            hidden_size: 5120,
            intermediate_size: 27648,
            n_heads: 40,
            n_kv_heads: 8,
            head_dim: 128,
            vocab_size: 152064,
            tied_embeddings: false,
            qkv_bias: true,
        }
    );
    let llama_8b = shape("Llama-8B");
    assert_eq!(
        (llama_8b.n_kv_heads, llama_8b.head_dim, llama_8b.qkv_bias),
        (8, 128, false)
    );
}

#[test]
fn parameter_counts_match_the_published_model_cards() {
    // Model-card sizes of the DeepSeek-R1-Distill checkpoints, in billions.
    let published = [
        ("Qwen-1.5B", 1.78),
        ("Qwen-7B", 7.62),
        ("Qwen-14B", 14.8),
        ("Qwen-32B", 32.8),
        ("Llama-8B", 8.03),
        ("Llama-70B", 70.6),
    ];
    for (name, billions) in published {
        let n_params = shape(name).n_params() as f64 / 1e9;
        assert_near(n_params, billions, 0.005, name);
    }
}

#[test]
fn kv_bytes_per_token_count_both_k_and_v_of_every_layer() {
    // 64 layers x 8 KV heads x 128 dims x (K and V) x 2 bytes.
    assert_eq!(shape("Qwen-32B").kv_bytes_per_token(2), 256 * 1024);
    assert_eq!(shape("Llama-8B").kv_bytes_per_token(4), 256 * 1024);
}

#[test]
fn qwen_32b_in_bf16_fits_an_h100_with_tens_of_thousands_of_kv_tokens() {
    let plan = request("Qwen-32B", BF16, H100_80GB, KvBudget::Fraction(0.9))
        .plan()
        .unwrap();
    println!("Qwen-32B bf16 on H100 80GB at 0.9: {plan}");
    assert_near(gib(plan.weights_bytes), 61.0, 0.01, "weights GiB");
    assert_near(gib(plan.workspace_bytes), 3.3, 0.1, "workspace GiB");
    assert!(plan.total_bytes <= (H100_80GB as f64 * 0.9) as u64);
    assert!(
        (25_000..40_000).contains(&plan.kv_tokens),
        "{} tokens",
        plan.kv_tokens
    );
}

#[test]
fn llama_8b_q4_k_m_fits_a_12_gb_card_with_its_kv_budget() {
    let mut req = request(
        "Llama-8B",
        WeightFormat::GgufQ4KM,
        CARD_12GB,
        KvBudget::Fraction(0.9),
    );
    // A 12 GB card serves smaller batches; quantized GGUF keeps its KV in f32 today.
    req.max_batched_tokens = 2048;
    req.max_running_requests = 64;
    req.kv_dtype_bytes = 4;
    let plan = req.plan().unwrap();
    println!("Llama-8B Q4_K_M on 12 GB at 0.9, f32 KV: {plan}");
    // The published DeepSeek-R1-Distill-Llama-8B-Q4_K_M.gguf is 4.92 GB.
    assert_near(
        plan.weights_bytes as f64 / 1e9,
        4.92,
        0.01,
        "Q4_K_M weights GB",
    );
    assert!(
        (15_000..30_000).contains(&plan.kv_tokens),
        "{} tokens",
        plan.kv_tokens
    );

    // A bf16 KV cache would hold twice as many.
    req.kv_dtype_bytes = 2;
    let bf16_kv = req.plan().unwrap();
    println!("Llama-8B Q4_K_M on 12 GB at 0.9, bf16 KV: {bf16_kv}");
    assert!(bf16_kv.kv_tokens >= 2 * plan.kv_tokens - 16);
}

#[test]
fn llama_8b_q8_0_weights_match_the_published_file_size() {
    let req = request(
        "Llama-8B",
        WeightFormat::GgufQ8_0,
        CARD_12GB,
        KvBudget::Fraction(0.9),
    );
    // The published DeepSeek-R1-Distill-Llama-8B-Q8_0.gguf is 8.54 GB.
    assert_near(
        req.shape.weights_bytes(req.weights) as f64 / 1e9,
        8.54,
        0.01,
        "Q8_0 GB",
    );
}

#[test]
fn llama_70b_in_bf16_is_refused_on_an_h200_naming_the_sizes() {
    let err = request("Llama-70B", BF16, H200, KvBudget::Fraction(0.9))
        .plan()
        .unwrap_err();
    let message = err.to_string();
    println!("{message}");
    assert!(matches!(err, PlanError::WeightsDoNotFit { .. }), "{err:?}");
    assert!(message.contains("weights need 131.4"), "{message}");
    assert!(message.contains("140.40 GiB"), "{message}");
}

#[test]
fn a_byte_budget_gets_whole_pages_when_it_fits_and_a_refusal_when_not() {
    let budget = KvBudget::Bytes(10 << 30);
    let plan = request("Qwen-7B", BF16, H100_80GB, budget).plan().unwrap();
    assert_eq!(plan.kv_tokens % 16, 0);
    assert_eq!(
        plan.kv_bytes,
        plan.kv_tokens as u64 * plan.kv_bytes_per_token
    );
    assert!(plan.kv_bytes <= 10 << 30 && plan.kv_bytes > (10 << 30) - 16 * plan.kv_bytes_per_token);

    let too_much = request("Qwen-7B", BF16, H100_80GB, KvBudget::Bytes(80 << 30)).plan();
    let err = too_much.unwrap_err();
    assert!(matches!(err, PlanError::KvDoesNotFit { .. }), "{err:?}");
    assert!(err.to_string().contains("kv cache 80.00 GiB"), "{err}");
}

#[test]
fn a_fraction_that_leaves_less_than_a_page_is_refused() {
    // Llama-8B in bf16 (~15 GiB) with its workspace on a 16 GiB device at 100%.
    let req = request("Llama-8B", BF16, 16 << 30, KvBudget::Fraction(1.0));
    let err = req.plan().unwrap_err();
    assert!(
        matches!(
            err,
            PlanError::NoRoomForKv { .. } | PlanError::WeightsDoNotFit { .. }
        ),
        "{err:?}"
    );
}

#[test]
fn a_missing_config_field_is_named() {
    let mut config = config("Qwen-7B");
    config.as_object_mut().unwrap().remove("intermediate_size");
    let err = ModelShape::from_hf_config(&config).unwrap_err();
    assert_eq!(
        err,
        PlanError::ConfigField {
            field: "intermediate_size"
        }
    );
}

#[test]
fn out_of_range_requests_are_refused() {
    let mut req = request("Qwen-7B", BF16, H100_80GB, KvBudget::Fraction(1.5));
    assert!(matches!(req.plan(), Err(PlanError::InvalidRequest(_))));
    req.kv_budget = KvBudget::Fraction(0.9);
    req.page_size = 0;
    assert!(matches!(req.plan(), Err(PlanError::InvalidRequest(_))));
}
