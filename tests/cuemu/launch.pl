#!/usr/bin/perl
# launch.pl: rewrites the <<<...>>> kernel launches of preprocessed CUDA source into calls of
# cuemu::launch (include/cuemu_device.h), so that g++ compiles it for the host emulation:
#   kern<T><<<grid, block, smem, stream>>>(a, b)
#   -> cuemu::launch(cuemu::cfg(grid, block, smem, stream),
#                    [=](auto... cuemu_a_) { kern<T>(cuemu_a_...); }, a, b)
# Reads stdin, writes stdout; line structure is kept, so compiler messages keep their lines.
use strict;
use warnings;

local $/;
my $src = <STDIN>;
my $out = '';

# index just past the bracket matching the one at $i ('(' or '<'), in $s
sub match_forward {
    my ($s, $i, $open, $close) = @_;
    my $depth = 0;
    for (my $j = $i; $j < length $s; $j++) {
        my $c = substr($s, $j, 1);
        $depth++ if $c eq $open;
        $depth-- if $c eq $close;
        return $j + 1 if $depth == 0;
    }
    die "launch.pl: unbalanced '$open' from offset $i\n";
}

while ((my $at = index($src, '<<<')) >= 0) {
    # the callee: an identifier (with ::) optionally followed by template arguments <...>
    my $k = $at;
    $k-- while $k > 0 && substr($src, $k - 1, 1) =~ /\s/;
    if (substr($src, $k - 1, 1) eq '>') {
        my $depth = 0;
        do {
            $k--;
            my $c = substr($src, $k, 1);
            $depth++ if $c eq '>';
            $depth-- if $c eq '<';
        } while ($depth > 0 && $k > 0);
    }
    $k-- while $k > 0 && substr($src, $k - 1, 1) =~ /[\w:]/;
    my $callee = substr($src, $k, $at - $k);
    $callee =~ s/\s+$//;
    my $cfg_end = index($src, '>>>', $at);
    die "launch.pl: '<<<' without '>>>'\n" if $cfg_end < 0;
    my $cfg = substr($src, $at + 3, $cfg_end - $at - 3);
    my $p = $cfg_end + 3;
    $p++ while substr($src, $p, 1) =~ /\s/;
    die "launch.pl: no argument list after launch of $callee\n" if substr($src, $p, 1) ne '(';
    my $args_end = match_forward($src, $p, '(', ')');
    my $args = substr($src, $p + 1, $args_end - $p - 2);
    my $sep = $args =~ /\S/ ? ', ' : '';
    $out .= substr($src, 0, $k)
          . "cuemu::launch(cuemu::cfg($cfg), [=](auto... cuemu_a_) { $callee(cuemu_a_...); }$sep$args)";
    $src = substr($src, $args_end);
}
print $out . $src;
