//! The workload's inputs and their reference checksums.

use super::*;

/// A `docker save` archive the workload imports.
pub(super) struct Image {
    /// The archive.
    pub(super) archive: PathBuf,
    /// Its layers' chain ids, bottom first.
    pub(super) layers: [String; 2],
}

/// What the guest gets, and the content each layer may have.
pub(super) struct Inputs {
    /// `img<j>.tar`.
    pub(super) images: Vec<Image>,
    /// `t<k>.tar`: layer tars applied onto created layers.
    pub(super) tars: Vec<PathBuf>,
    /// An imported layer's reference checksum, by chain id.
    pub(super) image_refs: BTreeMap<String, String>,
    /// The reference checksum of `t<k>.tar` applied to an empty layer.
    pub(super) tar_refs: Vec<String>,
    /// The checksum of an empty tree: a created layer before its apply.
    pub(super) empty: String,
    /// Every reference's listing, by checksum, to say how a layer differs.
    pub(super) listings: BTreeMap<String, Vec<String>>,
}

/// Makes the images and tars under `dir` (from a fixed seed) and their references.
pub(super) fn make_inputs(dir: &Path) -> Result<Inputs> {
    mkdir(dir)?;
    let mut rng = Rng(0x9e6c_63d0_676a_9a99);
    let skel = skeleton(&mut rng, 30);
    let mut inputs = Inputs {
        images: Vec::new(),
        tars: Vec::new(),
        image_refs: BTreeMap::new(),
        tar_refs: Vec::new(),
        empty: String::new(),
        listings: BTreeMap::new(),
    };
    let tree = dir.join("ref");
    mkdir(&tree)?;
    inputs.empty = reference(&tree, &mut inputs.listings)?;
    for j in 0..IMAGES {
        let base = Layer::new(dir, &format!("i{j}b"), &skel)?
            .files(&mut rng, 300)?
            .tar()?;
        let top = Layer::new(dir, &format!("i{j}t"), &skel)?
            .files(&mut rng, 150)?
            .tar()?;
        let archive = dir.join(format!("img{j}.tar"));
        docker_save(&archive, &[&base, &top], &format!("powercut{j}:latest"))?;
        let bottom = format!("sha256:{}", sha256_hex(&base)?);
        let upper = format!(
            "sha256:{}",
            sha256_of(format!("{bottom} sha256:{}", sha256_hex(&top)?).as_bytes())?
        );
        extract(&base, &tree)?;
        let sum = reference(&tree, &mut inputs.listings)?;
        inputs.image_refs.insert(bottom.clone(), sum);
        extract(&top, &tree)?;
        let sum = reference(&tree, &mut inputs.listings)?;
        inputs.image_refs.insert(upper.clone(), sum);
        clear(&tree)?;
        for t in [base, top] {
            fs::remove_file(&t).with_context(|| format!("removing {}", t.display()))?;
        }
        inputs.images.push(Image {
            archive,
            layers: [bottom, upper],
        });
    }
    for k in 0..TARS {
        let tar = Layer::new(dir, &format!("t{k}"), &skel)?
            .files(&mut rng, 300)?
            .tar()?;
        extract(&tar, &tree)?;
        inputs
            .tar_refs
            .push(reference(&tree, &mut inputs.listings)?);
        clear(&tree)?;
        inputs.tars.push(tar);
    }
    fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;
    Ok(inputs)
}

/// The sha256 of `data`, in hex.
fn sha256_of(data: &[u8]) -> Result<String> {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting sha256sum")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(data)
        .context("writing to sha256sum")?;
    let out = child.wait_with_output().context("reading sha256sum")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// Extracts a layer tar into `tree` as root (owners and modes kept).
fn extract(tar: &Path, tree: &Path) -> Result {
    output(
        Command::new("tar")
            .args(["--numeric-owner", "-xf"])
            .arg(tar)
            .arg("-C")
            .arg(tree),
    )
    .map(|_| ())
}

/// Empties `tree`.
fn clear(tree: &Path) -> Result {
    fs::remove_dir_all(tree).with_context(|| format!("removing {}", tree.display()))?;
    mkdir(tree)
}

/// The checksum of [`LISTING`] over `tree`; its lines go into `listings`.
pub(super) fn reference(
    tree: &Path,
    listings: &mut BTreeMap<String, Vec<String>>,
) -> Result<String> {
    let listing = output(
        Command::new("busybox")
            .args(["sh", "-c", LISTING])
            .current_dir(tree),
    )?;
    let sum = sha256_of(listing.as_bytes())?;
    listings.insert(sum.clone(), listing.lines().map(str::to_string).collect());
    Ok(sum)
}
