//! `envy init`: write an Envfile from a template (asks on a terminal, flags otherwise)
//! or converted from a Vagrantfile.

use std::path::Path;

use anyhow::{bail, Context as _, Result};

use crate::cli::InitArgs;
use crate::context::Context;
use crate::envfile;
use crate::vagrantfile::{self, NoteKind};

/// The templates shipped in templates/, by name.
pub const TEMPLATES: &[(&str, &str)] = &[
    ("minimal", include_str!("../../templates/minimal.toml")),
    ("rust", include_str!("../../templates/rust.toml")),
    ("python", include_str!("../../templates/python.toml")),
    ("node", include_str!("../../templates/node.toml")),
    ("postgres-staging", include_str!("../../templates/postgres-staging.toml")),
];

const DEFAULT_BOX: &str = "debian-12";

pub fn run(ctx: &Context, args: InitArgs) -> Result<i32> {
    let path = ctx.cwd.join(envfile::FILE_NAME);
    if path.exists() && !args.force {
        bail!("{} already exists; pass --force to overwrite it", path.display());
    }
    if let Some(vagrantfile) = &args.from_vagrantfile {
        return from_vagrantfile(ctx, &ctx.cwd.join(vagrantfile), &path);
    }
    let ask = ctx.ui.interactive && args.template.is_none();
    let template = match args.template {
        Some(t) => t,
        None if ask => {
            let names: Vec<&str> = TEMPLATES.iter().map(|(n, _)| *n).collect();
            let i = dialoguer::Select::new().with_prompt("Template").items(&names).default(0).interact()?;
            names[i].to_string()
        }
        None => "minimal".to_string(),
    };
    let text = TEMPLATES
        .iter()
        .find(|(n, _)| *n == template)
        .map(|(_, t)| *t)
        .with_context(|| {
            let names: Vec<&str> = TEMPLATES.iter().map(|(n, _)| *n).collect();
            format!("there is no template {template:?}; pick one of: {}", names.join(", "))
        })?;
    let box_name = match args.box_name {
        Some(b) => b,
        None if ask => dialoguer::Input::new().with_prompt("Box").default(DEFAULT_BOX.to_string()).interact_text()?,
        None => DEFAULT_BOX.to_string(),
    };
    let provider = match args.provider {
        Some(kind) => kind,
        None if ask => {
            let providers = crate::provider::registered();
            let names: Vec<String> = providers.iter().map(|r| format!("{} ({})", r.kind, r.summary)).collect();
            providers[dialoguer::Select::new().with_prompt("Provider").items(&names).default(0).interact()?].kind
        }
        None => ctx.config.provider.unwrap_or_else(crate::provider::default_kind),
    };
    let text = text.replace("{{box}}", &box_name.replace('\\', "\\\\").replace('"', "\\\"")).replace("{{provider}}", &provider.to_string());
    // What we write must read back: a box name that breaks the file is caught here.
    envfile::parse_str(&path, &text, provider)?;
    crate::fsutil::write_atomic(&path, text.as_bytes())?;
    crate::fsutil::give_to_invoking_user(&path)?;
    ctx.ui.step(format!("wrote {} from template {template}; next: envy up", path.display()));
    Ok(0)
}

/// Converts the Vagrantfile and writes the Envfile; what was changed or not converted
/// is listed on stdout, last, where it is seen.
fn from_vagrantfile(ctx: &Context, vagrantfile: &Path, path: &Path) -> Result<i32> {
    let conversion = vagrantfile::convert_file(vagrantfile, &ctx.cwd)?;
    let provider = ctx.config.provider.unwrap_or_else(crate::provider::default_kind);
    envfile::parse_str(path, &conversion.envfile, provider).with_context(|| {
        format!("the Envfile converted from {} does not read back; please report this with the Vagrantfile", vagrantfile.display())
    })?;
    crate::fsutil::write_atomic(path, conversion.envfile.as_bytes())?;
    crate::fsutil::give_to_invoking_user(path)?;
    ctx.ui.step(format!("wrote {} from {}", path.display(), vagrantfile.display()));
    for (kind, title) in [(NoteKind::Changed, "converted with a difference"), (NoteKind::NotConverted, "not converted (marked TODO in the Envfile)")] {
        let notes: Vec<_> = conversion.notes.iter().filter(|n| n.kind == kind).collect();
        if notes.is_empty() {
            continue;
        }
        println!("{title}:");
        for note in notes {
            println!("  {}:{}: {}", vagrantfile.display(), note.line, note.message);
        }
    }
    ctx.ui.step("next: read the Envfile, then envy up");
    Ok(0)
}
