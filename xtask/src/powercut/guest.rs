//! The guest: its initramfs and init script.

use super::*;

/// Builds `<work>/initramfs.gz`: busybox, plies, the inputs, the modules, the init.
pub(super) fn initramfs(
    kernel: &Kernel,
    plies: &Path,
    inputs: &Inputs,
    work: &Path,
) -> Result<PathBuf> {
    let tree = work.join("initramfs");
    let _ = fs::remove_dir_all(&tree);
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "inputs",
    ] {
        mkdir(&tree.join(d))?;
    }
    vm::copy(
        &which("busybox").expect("checked"),
        &tree.join("bin/busybox"),
    )?;
    vm::copy(plies, &tree.join("bin/plies"))?;
    let mut list = String::new();
    for (j, image) in inputs.images.iter().enumerate() {
        vm::copy(&image.archive, &tree.join(format!("inputs/img{j}.tar")))?;
        let [base, top] = &image.layers;
        let _ = writeln!(list, "img{j} {top} {base}");
    }
    write(&tree.join("inputs/images"), list)?;
    for (k, tar) in inputs.tars.iter().enumerate() {
        vm::copy(tar, &tree.join(format!("inputs/t{k}.tar")))?;
    }
    let mut refs: Vec<&String> = inputs.listings.keys().collect();
    refs.sort();
    let refs: String = refs.iter().map(|r| format!("{r}\n")).collect();
    write(&tree.join("refs"), refs)?;
    let order = vm::add_modules(kernel, &tree, MODULES)?;
    let init = tree.join("init");
    write(&init, init_script(&kernel.release, &order))?;
    fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .with_context(|| format!("making {} executable", init.display()))?;
    let image = work.join("initramfs.gz");
    vm::pack(&tree, &image)?;
    fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;
    Ok(image)
}

/// The guest's init: check and list the store, then the workload until the cut.
/// Marker lines: `kernel`, `fsck-begin`, `fsck-repair RC`, `fsck-check RC`,
/// `listed N`, `layer ID SUM|mount-failed`, `list ID LINE` (a layer's listing when
/// its checksum is no reference), `verified`, `workload`, `begin CMD`, `done CMD`,
/// `fail RC CMD`, `done` (before a power-off).
fn init_script(release: &str, modules: &[String]) -> String {
    const SCRIPT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /root /mnt /tmp
mount -t tmpfs tmp /tmp
mount -t tmpfs home /root
M=@MARK@
echo "$M kernel $(uname -r)"
for m in @MODULES@; do
  insmod /lib/modules/@RELEASE@/$m || echo "$M insmod-failed $m"
done
boot=$(sed -n 's/.*powercut\.boot=\([0-9]*\).*/\1/p' /proc/cmdline)
final=$(sed -n 's/.*powercut\.final=\([01]\).*/\1/p' /proc/cmdline)
off() { echo "$M done"; poweroff -f; sleep 10; reboot -f; }
for i in $(seq 100); do [ -b /dev/vda ] && break; sleep 0.1; done
mount -t ext4 /dev/vda /mnt || { echo "$M disk-failed"; off; }
R=/mnt/R
mkdir -p $R
p() { /bin/plies --root $R --driver overlay2 "$@" </dev/null; }

echo "$M fsck-begin"
p fsck --repair 2>&1
echo "$M fsck-repair $?"
p fsck 2>&1
echo "$M fsck-check $?"
p -q ls >/tmp/ls 2>/tmp/err || { echo "$M ls-failed"; cat /tmp/err; }
echo "$M listed $(wc -l </tmp/ls)"
while read -r id; do
  if ! m=$(p -q mount "$id" 2>/tmp/err); then
    echo "$M layer $id mount-failed"; cat /tmp/err; continue
  fi
  (cd "$m" && @LISTING@) >/tmp/list 2>/tmp/err || { echo "$M listing-failed $id"; cat /tmp/err; }
  sum=$(sha256sum </tmp/list | cut -d' ' -f1)
  p -q umount "$id" 2>&1 || echo "$M umount-failed $id"
  echo "$M layer $id $sum"
  grep -qx "$sum" /refs || sed "s|^|$M list $id |" /tmp/list
done </tmp/ls
echo "$M verified"
if [ "$final" = 1 ]; then umount /mnt; off; fi

echo "$M workload"
run() {
  what=$1; shift
  echo "$M begin $what"
  "$@" >/tmp/out 2>&1
  rc=$?
  if [ $rc = 0 ]; then echo "$M done $what"; else echo "$M fail $rc $what"; cat /tmp/out; fi
  sleep @PAUSE@
}
i=0
while :; do
  i=$((i + 1))
  p -q ls >/tmp/ls 2>/dev/null
  todo=
  while read -r name top base; do
    grep -qx "$top" /tmp/ls || { todo=$name; break; }
  done </inputs/images
  if [ -n "$todo" ]; then
    run "import $todo" p import /inputs/$todo.tar
  else
    set -- $(sed -n "$(( (boot + i) % @IMAGES@ + 1 ))p" /inputs/images)
    run "rm $2 $3" p rm "$2" "$3"
  fi
  k=$(( (boot + i) % @TARS@ ))
  id=$(printf 'c%03d-%03d' $boot $i)
  run "create $id" p create "$id"
  run "apply $id t$k" p apply "$id" /inputs/t$k.tar
  old=$(p -q ls 2>/dev/null | grep '^c[0-9]' | sort -r | tail -n +3)
  [ -n "$old" ] && run "rm $(echo $old)" p rm $old
done
"#;
    SCRIPT
        .replace("@MARK@", MARK)
        .replace("@MODULES@", &modules.join(" "))
        .replace("@RELEASE@", release)
        .replace("@LISTING@", LISTING)
        .replace("@IMAGES@", &IMAGES.to_string())
        .replace("@TARS@", &TARS.to_string())
        .replace("@PAUSE@", &PAUSE_SECS.to_string())
}
