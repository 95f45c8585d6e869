<?php
// `kit users import` / `kit courses import`: the CSV arrives on stdin (the kit checked it),
// Moodle's own upload CLI imports it. Its per-row report is long (a block per row), so this
// passes on only the rows with an error, a progress line every 500 rows, and its totals.
//   import.php users|courses TOTAL_ROWS [options for Moodle's CLI...]
$kind = $argv[1] ?? '';
$total = (int) ($argv[2] ?? 0);
$scripts = ['users' => 'admin/tool/uploaduser/cli/uploaduser.php',
            'courses' => 'admin/tool/uploadcourse/cli/uploadcourse.php'];
if (!isset($scripts[$kind])) {
    fwrite(STDERR, "usage: import.php users|courses TOTAL_ROWS [options]\n");
    exit(2);
}
$file = tempnam(sys_get_temp_dir(), 'kit-import-');
file_put_contents($file, stream_get_contents(STDIN));
$command = array_merge(['php', $scripts[$kind], '--file=' . $file], array_slice($argv, 3));
$process = proc_open($command, [1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes, '/var/www/moodle');
$row = null;
$printed = 0;
$started = microtime(true);
while (($line = fgets($pipes[1])) !== false) {
    $line = rtrim($line, "\r\n");
    if (preg_match('/^Line (\d+)\s*$/', $line, $m)) {                // uploaduser: a row's block starts
        $row = (int) $m[1];
        if ($total && ($row - 1) % 500 === 0 && $row > 1) {
            printf("kit: progress %d/%d rows (%.0f s)\n", $row - 1, $total, microtime(true) - $started);
        }
    } else if (preg_match('/^\s+(Error|Warning): /', $line) && $row !== null) {
        echo "Line $row\n$line\n";
    } else if (preg_match('/^(Users|Courses) [a-z ]+: ?\d+$|^Errors: \d+$|^Courses (total|created|updated|deleted|errors): \d+$/i', trim($line))) {
        echo trim($line) . "\n";
    } else if (preg_match('/^\s*(\d+)\s*\|\s*(.*?)\s*\|/', $line, $m) && $kind === 'courses') {
        // uploadcourse's plain table: "line | result | ..."; failed rows say so in the result.
        if (stripos($m[2], 'fail') !== false || stripos($line, 'error') !== false) {
            echo "Line {$m[1]}\n  Error: " . trim(substr($line, strpos($line, '|') + 1)) . "\n";
        }
    }
}
$errors = stream_get_contents($pipes[2]);
$code = proc_close($process);
unlink($file);
if ($errors !== '') {
    fwrite(STDERR, $errors);
}
exit($code);
