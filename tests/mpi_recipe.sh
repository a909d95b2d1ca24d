# What tests/test_mpi.sh and tests/test_mpi_gpu.sh share; sourced after tests/lib.sh, with
# RB set to the camotrain binary under test: the mpirun line, the training recipe both
# compare (tests/test_parallel.c's UNET: sync-BN, deep supervision, clipping, small buckets,
# on the smooth network) and the equivalence check within tests/test_parallel.c's bounds.

# tests run as root; 4 processes on a 2-core machine
MPI="mpirun --allow-run-as-root --oversubscribe"
# A sanitizer build (make test SAN=1): OpenMPI's plugins leak at MPI_Finalize, from modules
# unloaded before exit that LeakSanitizer cannot even name, and its report would fail every
# run here. ASan's memory checks stay on; only the leak report is off, for these scripts.
if ldd "$RB" 2> /dev/null | grep -q libasan; then
    export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
fi
# A ThreadSanitizer build (make test TSAN=1): OpenMPI's own lock order and atomics are
# reported from its uninstrumented libraries; tests/tsan_openmpi.supp names those, and only
# those
if ldd "$RB" 2> /dev/null | grep -q libtsan; then
    export TSAN_OPTIONS="${TSAN_OPTIONS:+$TSAN_OPTIONS }suppressions=$PWD/tests/tsan_openmpi.supp"
fi

# mpi_recipe NAME: synthetic data in $DATA, the recipe in $TMP/unet.cfg, its options in $C;
# on failure a FAIL line named NAME and status 1
mpi_recipe() {
    DATA=$TMP/synth
    if ! $RB synth --out "$DATA" --train 22 --test 4 --size 32 --seed 3 > "$TMP/synth.log" 2>&1; then
        fail "$1" "$(tail -3 "$TMP/synth.log")"; return 1
    fi
    smooth_net conf/models/unet_s.cfg "$TMP/unet_s_smooth.cfg"
    cat > "$TMP/unet.cfg" <<CFG
model = "$TMP/unet_s_smooth.cfg";
seed = 5;
data = { root = "$DATA"; img_size = 32; classes = 1; workers = 1;
         augment = { hflip = true; scale_min = 0.9; scale_max = 1.1; jitter = 0.1; }; };
train = { epochs = 2; batch = 8; optimizer = "sgd"; lr = 0.05; momentum = 0.9;
          weight_decay = 1e-4; loss = "structure"; deep_supervision = true; threads = 1;
          clip_grad_norm = 1.0; warmup_epochs = 0.0; };
eval = { every = 0; };
parallel = { sync_bn = true; bucket_mb = 0.02; };
log = { every = 1000; };
CFG
    C="--conf $TMP/unet.cfg --quiet"
}

rel() { $RB inspect "$1" --compare "$2" 2>&1 | sed -n 's/^relative L2 difference: //p'; }
worst() { $RB inspect "$1" --compare "$2" 2>&1 | sed -n 's/^worst tensor: .*relative L2 //p'; }
# close NAME A B: A within tests/test_parallel.c's bounds of B (model 1e-6, any tensor 1e-4)
close() {
    local e w
    e=$(rel "$2" "$3"); w=$(worst "$2" "$3")
    if awk -v e="$e" -v w="$w" \
           'BEGIN { exit !(e != "" && w != "" && e + 0 <= 1e-6 && w + 0 <= 1e-4) }'; then
        pass "$1 (relative L2 $e, worst tensor $w)"
    else fail "$1" "relative L2 '$e' (bound 1e-6), worst tensor '$w' (bound 1e-4)"; fi
}
