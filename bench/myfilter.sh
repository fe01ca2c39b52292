#!/bin/sh
# The classic myfilter.sh that mailfilter replaces (the course chapter in shared/seed), kept faithful,
# faults included: predictable $INSPECT_DIR/in.$$ names, clamscan loading the whole signature database
# for every message, and $VIRADMIN (never set) in the failure branch.
#   master.cf: myfilter unix - n n - - pipe flags=R user=clamav argv=/usr/local/bin/myfilter.sh -f ${sender} -- ${recipient}
# For the benchmark only, the settings at the top may come from the environment (defaults: the recipe's),
# plus CLAMSCAN_OPTIONS (e.g. --database=DIR) for the signature database under test.
INSPECT_DIR=${INSPECT_DIR:-/tmp}
SENDMAIL=${SENDMAIL:-"/usr/sbin/sendmail -i"}
VIRUSADMIN=${VIRUSADMIN:-"info@unix.specialist.ru"}

EX_TEMPFAIL=75
EX_UNAVAILABLE=69

FILTER_SPAMC=${FILTER_SPAMC:-"/usr/bin/spamc -u spamfilter -U /var/run/spamd.sock"}

trap "rm -f $INSPECT_DIR/in.$$ $INSPECT_DIR/vr.$$ $INSPECT_DIR/vr1.$$" 0 1 2 3 15

# Spam check
cat | $FILTER_SPAMC > $INSPECT_DIR/in.$$ || { echo Cannot save mail to file; exit $EX_TEMPFAIL; }

# Virus check
/usr/bin/clamscan $CLAMSCAN_OPTIONS -v -r --no-summary --stdout ${INSPECT_DIR}/in.$$>$INSPECT_DIR/vr.$$

AV_RESULT=$?

case "$AV_RESULT" in
0)
  $SENDMAIL "$@" <${INSPECT_DIR}/in.$$
  exit 0
  ;;
1)
  # A virus: tell the admin, drop the message.
  echo "Subject: VIRUS FOUND" >> $INSPECT_DIR/vr1.$$
  echo >> $INSPECT_DIR/vr1.$$
  echo "************************************************" >> $INSPECT_DIR/vr1.$$
  echo "* MAIL                                         *" >> $INSPECT_DIR/vr1.$$
  echo "************************************************" >> $INSPECT_DIR/vr1.$$
  echo >> $INSPECT_DIR/vr1.$$
  grep Received $INSPECT_DIR/in.$$ >> $INSPECT_DIR/vr1.$$
  echo "Mail from: $2 (may be forget)" >> $INSPECT_DIR/vr1.$$
  echo "To: $4" >> $INSPECT_DIR/vr1.$$
  grep Subject $INSPECT_DIR/in.$$ >> $INSPECT_DIR/vr1.$$
  echo >> $INSPECT_DIR/vr1.$$
  echo "************************************************" >> $INSPECT_DIR/vr1.$$
  echo "* Virus(es)                                    *" >> $INSPECT_DIR/vr1.$$
  echo "************************************************" >> $INSPECT_DIR/vr1.$$
  cat $INSPECT_DIR/vr.$$ >> $INSPECT_DIR/vr1.$$
  $SENDMAIL -f $VIRUSADMIN -r $VIRUSADMIN -F "Antivirus" $VIRUSADMIN < $INSPECT_DIR/vr1.$$
  exit 0
  ;;
*)
  # The scanner failed: tell the admin what the exit code means, keep the message queued.
  echo "Subject: ANTIVIRUS FAILED" >> $INSPECT_DIR/vr1.$$
  echo >> $INSPECT_DIR/vr1.$$
  echo "************************************************" >> $INSPECT_DIR/vr1.$$
  echo "* Antivirus Failed with next problem           *" >> $INSPECT_DIR/vr1.$$
  echo "************************************************" >> $INSPECT_DIR/vr1.$$
  case "$AV_RESULT" in
    40) echo "* Unknown option passed.                       *" >> $INSPECT_DIR/vr1.$$ ;;
    50) echo "* Database initialization error.               *" >> $INSPECT_DIR/vr1.$$ ;;
    52) echo "* Not supported file type.                     *" >> $INSPECT_DIR/vr1.$$ ;;
    53) echo "* Can't open directory.                        *" >> $INSPECT_DIR/vr1.$$ ;;
    54) echo "* Can't open file. (ofm)                       *" >> $INSPECT_DIR/vr1.$$ ;;
    55) echo "* Error reading file. (ofm)                    *" >> $INSPECT_DIR/vr1.$$ ;;
    56) echo "* Can't stat input file / directory.           *" >> $INSPECT_DIR/vr1.$$ ;;
    57) echo "* Can't get absolute path name of current      *" >> $INSPECT_DIR/vr1.$$
        echo "* working directory.                           *" >> $INSPECT_DIR/vr1.$$ ;;
    58) echo "* I/O error, please check your filesystem.     *" >> $INSPECT_DIR/vr1.$$ ;;
    59) echo "* Can't get information about current user     *" >> $INSPECT_DIR/vr1.$$
        echo "* from /etc/passwd.                            *" >> $INSPECT_DIR/vr1.$$ ;;
    60) echo "* Can't  get  information  about  user         *" >> $INSPECT_DIR/vr1.$$
        echo "* clamav (default name) from /etc/passwd.      *" >> $INSPECT_DIR/vr1.$$ ;;
    61) echo "* Can't fork.                                  *" >> $INSPECT_DIR/vr1.$$ ;;
    63) echo "* Can't create temporary files/directories     *" >> $INSPECT_DIR/vr1.$$
        echo "* (check permissions).                         *" >> $INSPECT_DIR/vr1.$$ ;;
    64) echo "* Can't write to temporary directory (please   *" >> $INSPECT_DIR/vr1.$$
        echo "* specify another one).                        *" >> $INSPECT_DIR/vr1.$$ ;;
    70) echo "* Can't allocate and clear memory (calloc).    *" >> $INSPECT_DIR/vr1.$$ ;;
    71) echo "* Can't allocate memory (malloc).              *" >> $INSPECT_DIR/vr1.$$ ;;
    *) echo "Unknown error $AV_RESULT" >> $INSPECT_DIR/vr1.$$ ;;
  esac
  echo "************************************************" >> $INSPECT_DIR/vr1.$$
  $SENDMAIL -f $VIRADMIN -r $VIRADMIN -F "Antivirus" "$VIRADMIN" < $INSPECT_DIR/vr1.$$
  exit $EX_TEMPFAIL
  ;;
esac

exit 0
