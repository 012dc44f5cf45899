//! The one grammar of variant specs, shared by `corefocus bench --variant` and
//! `corefocus experiment --variants` (and the built-in grids):
//!
//! ```text
//! VARIANT[@LAYER][:SETTING]...
//!   VARIANT  bert, p, pf, c or pfc (any case)
//!   LAYER    the combining layer: a 1-based number, L (the last layer) or L-k
//!   SETTING  p=RATIO   keep ratio of the pruning variants (p, pf, pfc)
//!            m=TOKENS  combination tokens of the combining variants (c, pfc)
//!            r=RESIDUAL the combined tokens' residual, token or group (c, pfc)
//!            assign=ASSIGNMENT the tokens' assignment, hard, soft or attend (c, pfc)
//!            pool=POOLING the pooling of the combined tokens: mean, counts or
//!                     counts+tokens (c, pfc)
//!            noise=BOOL Gumbel noise on the assignment in training, true or false (c, pfc)
//!            kgrad=BOOL the assignment's gradient into the tokens' states (c, pfc)
//!            visible=BOOL whether the embedded tokens attend to the combination tokens
//!                     before the combiner (c, pfc)
//!            RATIO     a bare number: the keep ratio, as p=RATIO (bench's spelling)
//! ```
//!
//! e.g. `bert`, `pf:0.8` = `pf:p=0.8`, `pfc@L-1`, `pfc@4:m=16`, `pfc@7:p=0.7:m=4`. A setting
//! given twice takes its last value. Each spec means what the `train` flags `--variant`,
//! `--combine-layer`, `--keep-ratio`, `--combine-tokens`, `--combine-residual`,
//! `--combine-assignment`, `--combine-pooling`, `--combine-noise`, `--combine-key-grad`
//! and `--combine-visible` with those values mean
//! ([`VariantSpec::method_args`]); `bench` resolves them on the paper's settings
//! ([`VariantSpec::method_config`]).

use crate::model::{MethodConfig, Variant};
use crate::train::options::{
    parse_combine_assignment, parse_combine_pooling, parse_combine_residual, MethodDefaults,
    Spelling,
};
use crate::train::MethodArgs;
use anyhow::{anyhow, bail, ensure, Context, Result};

/// A combining layer relative to the model depth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerSpec {
    /// 1-based layer number.
    Layer(usize),
    /// `L - k`.
    FromTop(usize),
}

impl LayerSpec {
    /// The 1-based layer in a model of `layers` layers (`L-k` must exist; a plain number
    /// is checked later, with the other settings).
    pub fn resolve(self, layers: usize) -> Result<usize> {
        match self {
            LayerSpec::Layer(l) => Ok(l),
            LayerSpec::FromTop(k) => {
                ensure!(
                    k < layers,
                    "layer L-{k} does not exist in a {layers}-layer model"
                );
                Ok(layers - k)
            }
        }
    }
}

/// A parsed variant spec (see the module docs): the `train` flags it stands for, with
/// its combining layer kept relative until the model's depth is known.
#[derive(Clone, Debug, PartialEq)]
pub struct VariantSpec {
    pub combine_layer: Option<LayerSpec>,
    /// The flags the spec sets; its `combine_layer` stays unset here
    /// ([`VariantSpec::method_args`] resolves it).
    pub args: MethodArgs,
}

impl std::str::FromStr for VariantSpec {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let mut parts = s.trim().split(':');
        let head = parts.next().unwrap_or("");
        let (name, layer) = match head.split_once('@') {
            Some((n, l)) => (n, Some(l)),
            None => (head, None),
        };
        let variant: Variant = name
            .parse()
            .with_context(|| format!("variant spec {s:?}"))?;
        let combine_layer = match layer {
            None => None,
            Some(l) => Some(parse_layer(l).with_context(|| {
                format!(
                    "variant spec {s:?}: layer {:?} is not a number, L or L-k",
                    l.trim()
                )
            })?),
        };
        let mut spec = VariantSpec {
            combine_layer,
            args: MethodArgs {
                variant,
                ..MethodArgs::default()
            },
        };
        let a = &mut spec.args;
        for part in parts {
            let Some((key, value)) = part.split_once('=') else {
                // Bench's spelling: a bare keep ratio.
                a.keep_ratio = Some(part.trim().parse().with_context(|| {
                    format!("variant spec {s:?}: {part:?} is neither key=value nor a keep ratio")
                })?);
                continue;
            };
            match key.trim() {
                "p" => a.keep_ratio = Some(number(s, value, "keep ratio", "a number")?),
                "m" => a.combine_tokens = Some(number(s, value, "token count", "a whole number")?),
                "r" => a.combine_residual = Some(parsed(s, value, parse_combine_residual)?),
                "assign" => {
                    a.combine_assignment = Some(parsed(s, value, parse_combine_assignment)?)
                }
                "pool" => a.combine_pooling = Some(parsed(s, value, parse_combine_pooling)?),
                "noise" => a.combine_noise = Some(flag(s, "noise", value)?),
                "kgrad" => a.combine_key_grad = Some(flag(s, "kgrad", value)?),
                "visible" => a.combine_visible = Some(flag(s, "visible", value)?),
                "heads" => a.combine_heads = Some(number(s, value, "heads", "a whole number")?),
                "drop" => a.combine_dropout = Some(number(s, value, "drop", "a number")?),
                other => {
                    bail!(
                        "variant spec {s:?}: unknown setting {other:?} (expected p, m, r, assign, pool, noise, kgrad, visible, heads or drop)"
                    )
                }
            }
        }
        Ok(spec)
    }
}

/// The number a setting of spec `s` gives (`what` names it, `kind` says which numbers).
fn number<T>(s: &str, value: &str, what: &str, kind: &str) -> Result<T>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    value
        .trim()
        .parse()
        .with_context(|| format!("variant spec {s:?}: {what} {value:?} is not {kind}"))
}

/// The value of a setting of spec `s` that `parse` reads (its message names what it
/// expected).
fn parsed<T>(s: &str, value: &str, parse: fn(&str) -> Result<T, String>) -> Result<T> {
    parse(value.trim()).map_err(|e| anyhow!("variant spec {s:?}: {e}"))
}

/// The value of a true/false setting `key` of spec `s`.
fn flag(s: &str, key: &str, value: &str) -> Result<bool> {
    value
        .trim()
        .parse()
        .map_err(|_| anyhow!("variant spec {s:?}: {key} {value:?} is not true or false"))
}

/// `L`, `L-k` or a number.
fn parse_layer(l: &str) -> Option<LayerSpec> {
    let l = l.trim();
    if l.eq_ignore_ascii_case("l") {
        Some(LayerSpec::FromTop(0))
    } else if let Some(k) = l.strip_prefix("L-").or_else(|| l.strip_prefix("l-")) {
        k.parse().ok().map(LayerSpec::FromTop)
    } else {
        l.parse().ok().map(LayerSpec::Layer)
    }
}

impl VariantSpec {
    /// The train flags of this spec for a model of `layers` layers (every other flag at
    /// its default; whether the settings apply to the variant is checked when they are
    /// resolved, by `MethodArgs::to_config`).
    pub fn method_args(&self, layers: usize) -> Result<MethodArgs> {
        let combine_layer = match self.combine_layer {
            None => None,
            Some(l) => Some(l.resolve(layers)?),
        };
        Ok(MethodArgs {
            combine_layer,
            ..self.args.clone()
        })
    }

    /// The method settings of this spec on the paper's settings (`MethodConfig::new`) for a
    /// model of `layers` layers; a pruning variant without a ratio keeps
    /// `default_keep_ratio`. A setting the variant does not use is an error.
    pub fn method_config(&self, layers: usize, default_keep_ratio: f32) -> Result<MethodConfig> {
        let args = MethodArgs {
            defaults: MethodDefaults::Paper,
            ..self.method_args(layers)?
        };
        args.check_applicable_as(Spelling::Spec)?;
        let mut m = MethodConfig::new(args.variant, layers);
        if args.variant.prunes() {
            m.keep_ratio = default_keep_ratio;
        }
        args.apply(&mut m)?;
        m.validate(layers)?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CombineAssignment, CombinePooling, CombineResidual};

    fn spec(s: &str) -> VariantSpec {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e:#}"))
    }

    fn err(s: &str) -> String {
        format!("{:#}", s.parse::<VariantSpec>().unwrap_err())
    }

    #[test]
    fn both_spellings_of_the_keep_ratio_mean_the_same() {
        let want = VariantSpec {
            combine_layer: None,
            args: MethodArgs {
                variant: Variant::Pf,
                keep_ratio: Some(0.8),
                ..MethodArgs::default()
            },
        };
        assert_eq!(spec("pf:0.8"), want);
        assert_eq!(spec("pf:p=0.8"), want);
        assert_eq!(spec(" PF:p = 0.8 "), want);
        // The last of repeated settings counts.
        assert_eq!(spec("pf:0.5:p=0.8"), want);
    }

    #[test]
    fn layers_and_tokens() {
        let s = spec("pfc@L-1:m=16");
        assert_eq!(s.args.variant, Variant::Pfc);
        assert_eq!(s.combine_layer, Some(LayerSpec::FromTop(1)));
        assert_eq!((s.args.keep_ratio, s.args.combine_tokens), (None, Some(16)));
        assert_eq!(spec("c@L").combine_layer, Some(LayerSpec::FromTop(0)));
        assert_eq!(spec("c@l-2").combine_layer, Some(LayerSpec::FromTop(2)));
        let s = spec("pfc@7:0.7:m=4");
        assert_eq!(s.combine_layer, Some(LayerSpec::Layer(7)));
        assert_eq!(
            (s.args.keep_ratio, s.args.combine_tokens),
            (Some(0.7), Some(4))
        );
        assert_eq!(
            spec("c@L-1:r=group").args.combine_residual,
            Some(CombineResidual::Group)
        );
        assert_eq!(
            spec("pfc:r=token").args.combine_residual,
            Some(CombineResidual::Token)
        );
        assert_eq!(
            spec("c@L-1:assign=soft").args.combine_assignment,
            Some(CombineAssignment::Soft)
        );
        assert!(err("c:assign=fuzzy").contains("combine assignment"));
        assert_eq!(
            spec("bert"),
            VariantSpec {
                combine_layer: None,
                args: MethodArgs::default(),
            }
        );
        assert_eq!(spec("c@L-1:kgrad=false").args.combine_key_grad, Some(false));
        assert_eq!(
            spec("pfc@L-1:visible=false").args.combine_visible,
            Some(false)
        );
        assert!(
            err("c:visible=no").contains("visible"),
            "{}",
            err("c:visible=no")
        );
        assert_eq!(spec("c@L-1:drop=0").args.combine_dropout, Some(0.0));
        assert!(err("c:drop=x").contains("drop"), "{}", err("c:drop=x"));
        assert_eq!(spec("c@L-1:heads=12").args.combine_heads, Some(12));
        assert!(err("c:heads=x").contains("heads"), "{}", err("c:heads=x"));
        assert_eq!(spec("c@L-1:noise=false").args.combine_noise, Some(false));
        assert_eq!(
            spec("pfc@L-1:pool=counts+tokens").args.combine_pooling,
            Some(CombinePooling::CountsAndTokens)
        );
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        assert!(err("xyz").contains("unknown variant"), "{}", err("xyz"));
        assert!(err("pf:q=1").contains("unknown setting"));
        assert!(err("pf:x").contains("neither key=value nor a keep ratio"));
        assert!(err("pf:p=x").contains("keep ratio \"x\" is not a number"));
        assert!(err("c:r=mean").contains("(expected token or group)"));
        assert!(
            err("c:pool=max").contains("counts+tokens"),
            "{}",
            err("c:pool=max")
        );
        assert!(err("c:noise=off").contains("not true or false"));
        assert!(err("pfc:m=1.5").contains("not a whole number"));
        assert!(err("pfc@x").contains("not a number, L or L-k"));
        assert!(err("pfc@L-x").contains("not a number, L or L-k"));
    }

    #[test]
    fn train_flags_resolve_layers_from_the_top() {
        let m = spec("pfc@L-1:p=0.5:m=16").method_args(6).unwrap();
        assert_eq!(
            (m.variant, m.combine_layer, m.keep_ratio, m.combine_tokens),
            (Variant::Pfc, Some(5), Some(0.5), Some(16))
        );
        assert_eq!(spec("c@3").method_args(6).unwrap().combine_layer, Some(3));
        let e = format!("{:#}", spec("pfc@L-9").method_args(6).unwrap_err());
        assert!(e.contains("L-9") && e.contains("6-layer"), "{e}");
    }

    #[test]
    fn bench_settings_start_from_the_papers() {
        let m = spec("pf").method_config(12, 0.9).unwrap();
        assert_eq!(m.variant, Variant::Pf);
        assert_eq!(m.keep_ratio, 0.9);
        let mut want = MethodConfig::new(Variant::Pf, 12);
        want.keep_ratio = 0.9;
        assert_eq!(format!("{m:?}"), format!("{want:?}"));
        assert_eq!(
            spec("pf:0.7").method_config(12, 0.9).unwrap().keep_ratio,
            0.7
        );
        assert_eq!(
            spec("p:p=0.6").method_config(12, 0.9).unwrap().keep_ratio,
            0.6
        );
        let m = spec("pfc@L-1:m=16").method_config(12, 0.9).unwrap();
        assert_eq!((m.combine_layer, m.combine_tokens), (11, 16));
        assert_eq!(spec("c@7").method_config(12, 0.9).unwrap().combine_layer, 7);
        let e = |s: &str| format!("{:#}", spec(s).method_config(12, 0.9).unwrap_err());
        assert_eq!(
            e("bert:0.5"),
            "the setting p= applies only to variants p, pf and pfc, not bert"
        );
        assert_eq!(
            e("pf@3"),
            "the setting @LAYER applies only to variants c and pfc, not pf"
        );
        assert_eq!(
            e("p:m=4"),
            "the setting m= applies only to variants c and pfc, not p"
        );
        assert!(!e("pfc@13").is_empty());
    }

    #[test]
    fn bench_and_train_resolve_a_spec_alike() {
        // On the paper's defaults, a spec means to `bench` what its flags mean to `train`.
        let bert = crate::model::BertConfig::sized(50, 48, 6, 12, 96);
        let s = "pfc@L-1:p=0.7:m=16:r=group:assign=attend:pool=mean:noise=false:kgrad=false:visible=false:heads=12:drop=0";
        let from_bench = spec(s).method_config(6, 0.9).unwrap();
        let mut args = spec(s).method_args(6).unwrap();
        args.defaults = MethodDefaults::Paper;
        let mut from_train = args.to_config(&bert).unwrap();
        // (`train` also takes the checkpoint's dropout for the classifier)
        from_train.classifier_dropout = from_bench.classifier_dropout;
        assert_eq!(from_bench, from_train);
        assert_eq!(
            (
                from_bench.keep_ratio,
                from_bench.combine_tokens,
                from_bench.combine_heads
            ),
            (0.7, 16, 12)
        );
        assert!(!from_bench.combine_visible && !from_bench.combine_noise);
    }
}
